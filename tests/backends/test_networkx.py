"""``to_networkx``: the data flow as a DiGraph with kinds, types and parameter counts."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

import torchgraft
from torchgraft.backends.networkx import to_networkx
from torchgraft.examples.nets import example

nx = pytest.importorskip("networkx")


def test_nodes_edges_and_hierarchy() -> None:
    net, args = example()
    g = to_networkx(torchgraft.capture(net, args))
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    conv = g.nodes["blocks.0.conv1"]
    assert conv["kind"].startswith("Conv2d(16, 16") and conv["type"] == "f32[N, 16, 32, 32]"
    assert conv["params"] == 16 * 16 * 9 and conv["parent"] == "blocks.0" and conv["role"] == "module"
    assert g.nodes["blocks.0.add"]["role"] == "op" and g.nodes["input:x"]["role"] == "input"
    assert g.edges["pool", "flatten"]["type"] == "f32[N, 16, 1, 1]"
    assert nx.has_path(g, "input:x", "output")
    order = list(nx.topological_sort(g))
    assert order.index("stem.0") < order.index("blocks.1.conv2") < order.index("fc")
    assert g.graph["blocks"]["blocks.0"]["kind"] == "Block<BasicBlock>"
    assert g.graph["blocks"]["blocks"]["params"] == 9344
    assert sum(d["params"] for _, d in g.nodes(data=True)) == 9978


def test_missing_networkx_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_networkx(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "networkx":
            raise ImportError("no networkx")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_networkx)
    net, args = example()
    with pytest.raises(torchgraft.TorchgraftError, match="pip install networkx"):
        to_networkx(torchgraft.capture(net, args))

"""The IR's data flow as a ``networkx.DiGraph``, for analysis with graph algorithms.

Nodes are the computing things of the fully expanded model, keyed by path: layers
(``blocks.0.conv1``), ops inside Blocks (``blocks.0.add``), combines of Parallel and
SkipConnection nodes (``layer/add``), the inputs (``input:x``) and ``output``. Each has
the attributes ``kind`` (layer label, op function, ...), ``type`` (output type text,
``""`` when unknown), ``params`` (parameter elements), ``role`` (``module``, ``op``,
``combine``, ``attr``, ``opaque``, ``input``, ``output``), ``label`` and ``parent`` (path
of the enclosing Block/Chain, ``None`` at the top). Edges carry ``type``: the type of
the value flowing along them. The hierarchy itself is in ``G.graph["blocks"]``:
path → ``{"kind", "type", "params", "parent"}`` for every Block/Chain/Container.

networkx is imported only when this is called (``pip install networkx``).
"""

from __future__ import annotations

from typing import Any

from torchgraft.backends.graph import picture
from torchgraft.errors import TorchgraftError
from torchgraft.ir.model import Model


def _networkx() -> Any:
    try:
        import networkx
    except ImportError:
        raise TorchgraftError("to_networkx needs the networkx package, which is not installed; "
                              "pip install networkx") from None
    return networkx


def to_networkx(model: Model) -> Any:
    """A ``networkx.DiGraph`` of the model's data flow (see the module docstring for attributes)."""
    nx = _networkx()
    pic = picture(model)
    g = nx.DiGraph(name=model.name)
    for nid, n in pic.nodes.items():
        g.add_node(nid, kind=n.kind, type=n.type, params=n.params, role=n.role, label="\n".join(n.label),
                   parent=n.parent)
    for (src, dst), value_type in pic.edges.items():
        g.add_edge(src, dst, type=value_type)
    g.graph["blocks"] = {cid: {"kind": c.kind, "type": c.type, "params": c.params, "parent": c.parent}
                         for cid, c in pic.clusters.items()}
    return g

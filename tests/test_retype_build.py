"""``retype`` builds its replay modules from the IR (``retype_build``) where that is exact, and the types
are the ones the emitted ``model.py`` gives: same ``model.types``, output type and every op type.

Each model is retyped twice: as ``retype`` does it, and with the IR build switched off (the emitted
build); ``blocker`` says which path a model takes, and models it refuses still retype, by emission.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import import_torchvision

import torchgraft as tg
from torchgraft import ir
from torchgraft import retype as retype_module
from torchgraft.ir.graph import Graph
from torchgraft.ir.nodes import Block
from torchgraft.ir.traverse import walk
from torchgraft.ir.values import Const
from torchgraft.retype import retype
from torchgraft.retype_build import IRBlock, NotFromIR, blocker, build_from_ir

T = ir.TensorType


def _op_types(model: ir.Model) -> dict[tuple[str, str, str], str]:
    out = {}
    for path, node in walk(model.root):
        if isinstance(node, Block):
            for which, g in (("eval", node.body), ("train", node.train_body)):
                if isinstance(g, Graph):
                    out.update({(path, which, v.name): str(v.type) for v in (*g.inputs, *g.ops)})
    return out


def _both(model: ir.Model, monkeypatch: pytest.MonkeyPatch) -> tuple[ir.Model, ir.Model]:
    """(retype via the IR build, retype via the emitted build)."""
    fast = retype(model)
    with monkeypatch.context() as m:
        def refuse(model: ir.Model) -> nn.Module:
            raise NotFromIR("forced: emitted build")
        m.setattr(retype_module, "build_from_ir", refuse)
        slow = retype(model)
    return fast, slow


def _same_types(model: ir.Model, monkeypatch: pytest.MonkeyPatch, from_ir: bool) -> None:
    """Both builds give the same types, and ``blocker`` agrees with ``from_ir``."""
    assert (blocker(model) is None) is from_ir, blocker(model)
    fast, slow = _both(model, monkeypatch)
    assert fast.types == slow.types and fast.types
    assert fast.output_type == slow.output_type
    assert _op_types(fast) == _op_types(slow)
    assert fast.root == slow.root  # types live in the graphs: equal trees, equal types


class _Shared(nn.Module):
    """A tied weight, one module at two paths, a non-persistent buffer, a frozen parameter, a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50, bias=False)
        self.head.weight = self.emb.weight
        self.act = nn.GELU()
        self.act2 = self.act
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.register_buffer("scale", torch.full((8,), 0.5), persistent=False)
        self.gain = nn.Parameter(torch.ones(8), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.act(self.emb(ids)) * self.scale
        h = self.act2(self.mlp(h)) * self.gain
        return self.head(h).float()


class _Branchy(nn.Module):
    """Data-dependent control flow: the forward is kept as copied source."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if y.sum() > 0:
            return F.relu(y)
        return -y


def test_toy_models_from_the_ir(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tg.capture(_Shared().eval(), (torch.randint(0, 50, (2, 5)),))
    assert shared.ties == (("act2", "act"), ("head.weight", "emb.weight")) and shared.frozen == ("gain",)
    _same_types(shared, monkeypatch, from_ir=True)
    built = build_from_ir(shared)
    assert isinstance(built, IRBlock) and not built.training
    assert built.get_submodule("head").weight is built.get_submodule("emb").weight  # the ties
    assert built.get_submodule("act2") is built.get_submodule("act")
    assert all(t.device.type == "meta" for t in (*built.parameters(), *built.buffers()))
    assert "scale" not in built.state_dict() and built.get_buffer("scale").shape == (8,)
    assert not built.get_parameter("gain").requires_grad
    chain = tg.build(ir.Chain(ir.LinearLayer(4, 8), ir.ReLU(), ir.LinearLayer(8, 2)), T(("N", 4)))
    _same_types(chain, monkeypatch, from_ir=True)


def test_the_module_tree_matches_the_emitted_one() -> None:
    """Same state_dict keys, shapes and dtypes, same buffers (non-persistent too), same module classes
    for every layer and container; Block constants are set as attributes."""
    model = tg.capture(_Shared().eval(), (torch.randint(0, 50, (2, 5)),))
    root = model.root
    assert isinstance(root, Block)
    model = model.with_root(replace(root, constants=(("width", Const(8)), ("dtype", Const(torch.float16)))))
    ours, emitted = build_from_ir(model), retype_module._emitted(model)[0]

    def meta(m: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype, bool]]:
        return [(k, tuple(t.shape), t.dtype, t.requires_grad) for k, t in m.state_dict(keep_vars=True).items()]

    assert meta(ours) == meta(emitted)
    assert [(k, b.shape) for k, b in ours.named_buffers()] == [(k, b.shape) for k, b in emitted.named_buffers()]
    kinds = [(k, type(m)) for k, m in ours.named_modules(remove_duplicate=False) if not isinstance(m, IRBlock)]
    assert kinds == [(k, type(m)) for k, m in emitted.named_modules(remove_duplicate=False) if k and k in dict(kinds)]
    assert (ours.width, ours.dtype) == (8, torch.float16)


def test_models_that_need_the_emitted_classes_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    parallel = tg.build(ir.Chain(ir.Parallel(ir.LinearLayer(4, 4), ir.ReLU(), combine=ir.Stack(0)), ir.ReLU()),
                        T(("N", 4)))
    assert "Parallel at 0" in (blocker(parallel) or "")
    _same_types(parallel, monkeypatch, from_ir=False)
    branchy = tg.capture(_Branchy().eval(), (torch.randn(3, 4),))
    assert "PySource" in (blocker(branchy) or "")
    with pytest.raises(NotFromIR, match="PySource"):
        build_from_ir(branchy)
    _same_types(branchy, monkeypatch, from_ir=False)


def test_resnet18(monkeypatch: pytest.MonkeyPatch) -> None:
    tv = import_torchvision()
    torch.manual_seed(0)
    model = tg.capture(tv.models.resnet18().eval(), (torch.randn(2, 3, 64, 64),))
    _same_types(model, monkeypatch, from_ir=True)


def test_tiny_bert(monkeypatch: pytest.MonkeyPatch) -> None:
    import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    torch.manual_seed(0)
    model = tg.capture(transformers.BertModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 10))})
    _same_types(model, monkeypatch, from_ir=True)


def test_the_1000_block_benchmark_model(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from passes_vs_fx import build

    model = tg.capture(build(1000), (torch.randn(2, 4),))
    _same_types(model, monkeypatch, from_ir=True)

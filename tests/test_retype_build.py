"""``retype`` builds its replay modules from the IR (``retype_build``) where that is exact, and the types
are the ones the emitted ``model.py`` gives: same ``model.types``, output type and every op type.

Each model is retyped twice: as ``retype`` does it, and with the IR build switched off (the emitted
build); ``blocker`` says which path a model takes, and models it refuses still retype, by emission.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import import_torchvision

import torchgraft as tg
from torchgraft import ir, passes
from torchgraft import retype as retype_module
from torchgraft.ir.graph import Graph
from torchgraft.ir.model import HelperKind
from torchgraft.ir.nodes import Block, ClassRef
from torchgraft.ir.traverse import walk
from torchgraft.ir.values import Const
from torchgraft.passes import pipeline as pipeline_module
from torchgraft.retype import RetypeWarning, retype
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
        def refuse(model: ir.Model, **_: object) -> nn.Module:
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


@torch.fx.wrap
def _scaled(x: torch.Tensor) -> torch.Tensor:
    """A helper fx keeps as a call: capture copies its source into the model."""
    return x * math.pi


class _CallsHelper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(4, 4), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(_scaled(self.lin(x)))


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


class _Copied(nn.Module):
    """A forward that reads ``x.requires_grad``, which no guard sees: its source is copied (and runs on meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return -y if x.requires_grad else F.relu(y)


class _HasCopied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = _Copied()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) * 2


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


def test_models_that_need_copied_code_fall_back_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    branchy = tg.capture(_Branchy().eval(), (torch.randn(3, 4),))
    assert "PySource" in (blocker(branchy) or "")
    with pytest.raises(NotFromIR, match="PySource"):
        build_from_ir(branchy)
    copied = tg.capture(_HasCopied().eval(), (torch.randn(3, 4),))
    _same_types(copied, monkeypatch, from_ir=False)
    notes: list[str] = []
    retype(copied, notes)
    assert notes == ["types re-inferred by running the emitted model.py: Block at head: its forward is PySource "
                     "(copied source): the emitted class runs that code"]
    helper = tg.capture(_CallsHelper().eval(), (torch.randn(3, 4),))
    assert any(h.kind is HelperKind.FUNCTION for h in helper.helpers)
    assert "copied helper function" in (blocker(helper) or "")
    _same_types(helper, monkeypatch, from_ir=False)
    monkeypatch.setattr(pipeline_module, "CARRY_TYPES", False)  # re-inferred, not carried over
    report = passes.run(helper, "swap-activation{from=relu to=silu}").reports[0]
    assert report.matches and any("copied helper function" in n for n in report.notes), report.notes


def test_a_model_retype_cannot_call_is_reported_not_skipped_silently() -> None:
    chain = tg.build(ir.Chain(ir.LinearLayer(4, 4), ir.ReLU()), T(("N", 4)))
    no_inputs = replace(chain, inputs=())
    notes: list[str] = []
    with pytest.warns(RetypeWarning, match="it has no inputs"):
        assert retype(no_inputs, notes) is no_inputs
    assert notes and "types not re-inferred" in notes[0]


def test_resnet18(monkeypatch: pytest.MonkeyPatch) -> None:
    tv = import_torchvision()
    torch.manual_seed(0)
    model = tg.capture(tv.models.resnet18().eval(), (torch.randn(2, 3, 64, 64),))
    _same_types(model, monkeypatch, from_ir=True)


def _no_emission(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the emitted fallback fail the test: the model must be typed from the IR alone."""
    def refuse(model: ir.Model) -> None:
        raise AssertionError(f"retype emitted model.py: {blocker(model)}")
    monkeypatch.setattr(retype_module, "_emitted", refuse)


def _transformers() -> object:
    import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
    return pytest.importorskip("transformers")


def test_tiny_bert(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers: Any = _transformers()
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    torch.manual_seed(0)
    model = tg.capture(transformers.BertModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 10))})
    _same_types(model, monkeypatch, from_ir=True)


def test_transformers_models_are_typed_from_the_ir_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny Llama (its MLP body is structure: a Parallel joined by mul) and tiny BERT: retyped, and a pass
    that breaks BERT's types fails with the node path, with no model.py emitted or imported."""
    transformers: Any = _transformers()
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    llama = tg.capture(transformers.LlamaModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 10))})
    _same_types(llama, monkeypatch, from_ir=True)  # the emitted path agrees
    _no_emission(monkeypatch)
    typed = retype(llama)
    assert typed.types == llama.types and typed.output_type == llama.output_type
    bert_cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=64)
    bert = tg.capture(transformers.BertModel(bert_cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 6))})
    assert retype(bert).types == bert.types
    path = "encoder.layer.0.attention.output.dense"
    narrowed = bert.with_root(ir.replace_at(bert, path, ir.LinearLayer(32, 16)).root)
    with pytest.raises(tg.IRError, match=r"encoder\.layer\.0\.attention\.output: op 'add' failed"):
        retype(narrowed)


def test_the_1000_block_benchmark_model(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from passes_vs_fx import build

    model = tg.capture(build(1000), (torch.randn(2, 4),))
    _same_types(model, monkeypatch, from_ir=True)


def _res_block() -> ir.Block:
    """A hand-built Block whose forward is a combinator tree over its children and an inline ReLU."""
    body = ir.Chain(ir.SkipConnection(ir.Chain(ir.ChildRef("lin"), ir.ReLU())),
                    ir.Parallel(ir.ChildRef("norm"), ir.ChildRef("gate"), combine="mul"))
    children = (("lin", ir.LinearLayer(8, 8)), ("norm", ir.LayerNorm(8)), ("gate", ir.Sigmoid()))
    return ir.Block(ClassRef("toy", "Res"), children, body)


def _combinators() -> ir.Model:
    net = ir.Chain(
        ir.LinearLayer(4, 8),
        ir.Parallel(ir.LinearLayer(8, 8), ir.ReLU(), combine=ir.Stack(0)),          # [2, N, 8]
        ir.SkipConnection(ir.Chain(ir.LinearLayer(8, 8), ir.Tanh()), combine="sub"),
        ir.Parallel(left=ir.LinearLayer(8, 3), right=ir.LinearLayer(8, 5), combine=ir.Concat(-1)),
        ir.Parallel(ir.LinearLayer(8, 8), ir.Identity(), ir.SiLU(), combine="mean"),
        ir.SkipConnection(ir.LinearLayer(8, 8), combine=torch.atan2),
        _res_block(),
    )
    return tg.build(net, T(("N", 4)))


def _blocks_are_holders(model: ir.Model) -> None:
    built = build_from_ir(model)
    for path, node in walk(model.root):
        if isinstance(node, (ir.Block, ir.Parallel, ir.SkipConnection)):
            assert isinstance(built.get_submodule(path), IRBlock), path


def test_hand_built_combinators_are_typed_from_the_ir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module-level Parallel/SkipConnection with several joins, and a hand-built Block whose body is a
    combinator tree: typed by running the IR, with the types the emitted path (and ``build``) gives."""
    model = _combinators()
    ir.verify(model)
    _blocks_are_holders(model)
    _same_types(model, monkeypatch, from_ir=True)
    typed = retype(model)
    assert typed.types == model.types  # what tg.build inferred by running the emitted module
    assert {p: str(t) for p, t in typed.types}["1"] == "f32[2, N, 8]"
    assert str(typed.output_type) == "f32[2, N, 8]"


def test_a_broken_join_fails_with_the_node_path() -> None:
    model = _combinators()
    broken = model.with_root(ir.replace_at(model, "5.body", ir.LinearLayer(8, 7)).root)  # atan2(x, 7 wide)
    with pytest.raises(tg.IRError, match=r"no longer runs .*: 5: its combine .*atan2.* failed"):
        retype(broken)


class _Reparam(nn.Module):
    def __init__(self, orthogonal: bool = False) -> None:
        super().__init__()
        P = nn.utils.parametrizations
        self.a = P.weight_norm(nn.Linear(6, 8))
        self.b = P.spectral_norm(nn.Linear(8, 8), n_power_iterations=2)
        self.c = P.orthogonal(nn.Linear(8, 8)) if orthogonal else nn.Identity()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the legacy hook-based API, still captured
            self.d = nn.utils.weight_norm(nn.Linear(8, 8), dim=None)
            self.e = nn.utils.weight_norm(nn.Linear(8, 8), dim=None)  # equal to d: built afresh, not deep-copied
        self.seq = nn.Sequential(P.weight_norm(nn.Linear(8, 4), dim=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(self.e(self.d(self.c(self.b(self.a(x))))))


def test_reparametrized_layers_are_built_from_the_ir(monkeypatch: pytest.MonkeyPatch) -> None:
    """weight_norm, spectral_norm and the legacy weight_norm registered on meta as model.py registers them;
    ``orthogonal`` too, which the emitted model.py cannot build on meta (its right_inverse reads values)."""
    model = tg.capture(_Reparam().eval(), (torch.randn(3, 6),))
    ir.verify(model)
    assert blocker(model) is None
    built, emitted = build_from_ir(model), retype_module._emitted(model)[0]
    assert list(built.state_dict()) == list(emitted.state_dict()) == list(_Reparam().state_dict())
    assert all(t.device.type == "meta" for t in built.state_dict().values())
    _same_types(model, monkeypatch, from_ir=True)
    orth = tg.capture(_Reparam(orthogonal=True).eval(), (torch.randn(3, 6),))
    shapes = {k: t.shape for k, t in _Reparam(orthogonal=True).state_dict().items()}
    assert {k: t.shape for k, t in build_from_ir(orth).state_dict().items()} == shapes
    with pytest.raises(RuntimeError, match="meta"):
        retype_module._emitted(orth)
    assert retype(orth).types == orth.types and str(orth.output_type) == "f32[N, 4]"


def test_import_and_constant_helpers_need_no_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import lines and constants are read only by copied code: a model carrying them is built from the IR."""
    model = tg.build(ir.Chain(ir.LinearLayer(4, 4), ir.ReLU()), T(("N", 4)))
    model = replace(model, helpers=(ir.Helper("math", "import math\n", "", HelperKind.IMPORT),
                                    ir.Helper("EPS", "EPS = 1e-06\n", "toy", HelperKind.CONSTANT)))
    ir.verify(model)
    assert blocker(model) is None
    _same_types(model, monkeypatch, from_ir=True)

"""swap-activation carries the types over (``passes.run`` skips the re-inference) only where every site is proven
to keep them (``passes.swap_types``): the carried model must equal the fully re-inferred one, and a swap on an
integer tensor, or on a module called twice, is still re-inferred."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import import_torchvision

import torchgraft as tg
from torchgraft import ir, passes
from torchgraft.ir.graph import Graph
from torchgraft.ir.nodes import Block
from torchgraft.ir.ownership import derived_key_map
from torchgraft.ir.traverse import walk
from torchgraft.passes import pipeline
from torchgraft.passes.rewrite import count_params
from torchgraft.passes.swap_activation import SwapActivation


def _op_types(model: ir.Model) -> dict[tuple[str, str], str]:
    return {(p, v.name): str(v.type) for p, n in walk(model.root) if isinstance(n, Block)
            for g in (n.body, n.train_body) if isinstance(g, Graph) for v in (*g.inputs, *g.ops)}


def _runs(model: ir.Model, text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[passes.PassResult, int]:
    """``passes.run`` as users call it, and how many times it re-inferred the types."""
    calls = []
    real = pipeline._retyped

    def spy(*args: Any) -> ir.Model:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(pipeline, "_retyped", spy)
    return passes.run(model, text), len(calls)


def _carried_equals_full(model: ir.Model, text: str, monkeypatch: pytest.MonkeyPatch) -> passes.PassResult:
    """The pass's types carried over equal a full re-inference, and no re-inference ran."""
    carried, retyped = _runs(model, text, monkeypatch)
    assert retyped == 0 and carried.reports[0].matches
    assert all(m.keeps_types for m in carried.reports[0].matches)
    with monkeypatch.context() as m:
        m.setattr(pipeline, "CARRY_TYPES", False)
        full = passes.run(model, text)
    assert carried.model.types == full.model.types and carried.model.types
    assert carried.model.output_type == full.model.output_type
    assert _op_types(carried.model) == _op_types(full.model)
    assert carried.model.root == full.model.root
    assert carried.report == full.report
    return carried


def _state_kept(model: ir.Model, text: str) -> None:
    """swap-activation's declared ``keeps_state``: no key moves, the parameter count stays (as derived)."""
    after = passes.run(model, text, retype_after=False, verify=False).model
    assert derived_key_map(model, after) == {} and set(after.weights) == set(model.weights)
    assert count_params(after) == count_params(model)


def test_carried_types_equal_a_full_retype_on_the_benchmark_model(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from passes_vs_fx import build

    model = tg.capture(build(30), (torch.randn(2, 4),))
    for text in ("swap-activation{from=relu to=silu}", "swap-activation{from=relu to=sigmoid}"):
        _carried_equals_full(model, text, monkeypatch)
    _state_kept(model, "swap-activation{from=relu to=silu}")


def test_carried_types_equal_a_full_retype_on_resnet18_and_tiny_bert(monkeypatch: pytest.MonkeyPatch) -> None:
    tv = import_torchvision()
    torch.manual_seed(0)
    resnet = tg.capture(tv.models.resnet18().eval(), (torch.randn(2, 3, 64, 64),))
    out = _carried_equals_full(resnet, "swap-activation{from=relu to=silu}", monkeypatch)
    assert any(p.endswith(".silu") for p, _ in out.model.types)  # renamed children take their types along
    _state_kept(resnet, "swap-activation{from=relu to=gelu}")
    transformers: Any = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    bert = tg.capture(transformers.BertModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 10))})
    _carried_equals_full(bert, "swap-activation{from=gelu to=silu}", monkeypatch)
    _state_kept(bert, "swap-activation{from=gelu to=relu}")
    result, retyped = _runs(bert, "swap-activation{from=tanh to=relu}", monkeypatch)  # tanh floats integers
    assert retyped == 1 and result.reports[0].matches and not result.reports[0].matches[0].keeps_types
    result, retyped = _runs(resnet, "swap-activation{from=relu to=gelu}", monkeypatch)  # in-place: copy_ added
    assert retyped == 1 and not any(m.keeps_types for m in result.reports[0].matches)


class _OnIntegers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x.long() - 1).float() + x


def test_a_swap_on_an_integer_tensor_is_retyped(monkeypatch: pytest.MonkeyPatch) -> None:
    """relu on int64 proves nothing: swapped for sigmoid (int64 -> float32) the op's type must change."""
    model = tg.capture(_OnIntegers().eval(), (torch.randn(3, 4),))
    result, retyped = _runs(model, "swap-activation{from=relu to=sigmoid}", monkeypatch)
    assert retyped == 1 and not any(m.keeps_types for m in result.reports[0].matches)
    before = [t for (_, name), t in _op_types(model).items() if name.startswith("relu")]
    after = [t for (_, name), t in _op_types(result.model).items() if name.startswith("sigmoid")]
    assert [t[:3] for t in before] == ["i64"] and [t[:3] for t in after] == ["f32"], (before, after)
    x = torch.randn(3, 4)
    torch.testing.assert_close(tg.emit(result.model).materialize().eval()(x),
                               torch.sigmoid(x.long() - 1).float() + x, rtol=0, atol=0)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(x)) + self.relu(x.long()).float()


class _Shared(nn.Module):
    """The same block called twice: once on floats, once on integers (its ops record one call)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _OnIntegersOrNot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.inner(x.long()).float()


class _OnIntegersOrNot(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) * 2


@pytest.mark.parametrize("module", [_Twice, _Shared])
def test_a_module_called_twice_on_floats_and_integers_is_retyped(
        module: type[nn.Module], monkeypatch: pytest.MonkeyPatch) -> None:
    """A call site on int64 among float ones proves nothing: the full re-inference runs, and a swap the integer
    call cannot take is not carried over."""
    model = tg.capture(module().eval(), (torch.randn(3, 4),))
    result, retyped = _runs(model, "swap-activation{from=relu to=relu6}", monkeypatch)
    assert retyped == 1 and not any(m.keeps_types for m in result.reports[0].matches)
    swap = SwapActivation(from_="relu", to="silu")
    _, matches = swap.rewrite(model)
    assert matches and not swap.types_kept(matches)


def test_skipping_the_rename_walk_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that saw no site needing ``_finish`` (renames, write-backs) skips it: the same model as with it."""
    from torchgraft.passes import swap_activation

    tv = import_torchvision()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from passes_vs_fx import build

    models = [tg.capture(build(5), (torch.randn(2, 4),)), tg.capture(_Twice().eval(), (torch.randn(3, 4),)),
              tg.capture(tv.models.resnet18().eval(), (torch.randn(1, 3, 32, 32),))]
    swaps = [SwapActivation(from_="relu", to="silu"), SwapActivation(from_="relu", to="gelu")]
    plain = [swap.rewrite(m)[0] for m in models for swap in swaps]
    monkeypatch.setattr(swap_activation, "_needs_finish", lambda *a: True)
    always = [swap.rewrite(m)[0] for m in models for swap in swaps]
    for a, b in zip(plain, always):
        assert a.root == b.root and a.types == b.types


class _Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) * 2


class _CopiedForward(nn.Module):
    """Data-dependent control flow: the forward stays copied source, calling its child on floats and integers."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.inner(x) + self.inner(x.long()).float()
        return x


def test_a_child_of_copied_source_is_not_proven() -> None:
    """The copied forward's calls are not IR: its children count as called more than once (their recorded types
    may describe only one call), besides having no recorded types here."""
    from torchgraft.passes.swap_types import SiteTypes

    model = tg.capture(_CopiedForward().eval(), (torch.rand(3, 4),))
    assert type(model.root.body).__name__ == "PySource"  # type: ignore[attr-defined]
    proof = SiteTypes(model, ir.ActKind.RELU6)
    assert not proof._called_once("inner") and not proof._called_once("inner.relu")
    _, matches = SwapActivation(from_="relu", to="relu6").rewrite(model)
    assert matches and not any(m.keeps_types for m in matches)

"""Per-block fx traces: one trace unless the forward reads self.training; math on sizes still traces."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.frontends import fx_block
from torchgraft.frontends.fx_block import ModeRead, merge_training, trace_graph
from torchgraft.frontends.fx_session import session
from torchgraft.ir.values import Training


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) / math.sqrt(x.size(-1))  # math on a Proxy: needs fx's math autowrap


class ModeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(x), 0.5, self.training)


def test_forward_that_never_reads_training_is_traced_once() -> None:
    graph, consts = trace_graph(Scaled(), None, {}, {})
    assert not consts and any(op.target.__class__.__name__ == "ChildCall" for op in graph.ops)


class RReLUMode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rrelu(x, 0.1, 0.3, self.training)


class ModeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) if self.training else x


def test_forward_passing_training_on_is_traced_once_as_both_traces_merged() -> None:
    for mod in (ModeDependent(), RReLUMode()):
        once, _ = trace_graph(mod, None, {}, {})  # the flag only passed to a call: Training() there
        merged = merge_training(trace_graph(mod, True, {}, {})[0], trace_graph(mod, False, {}, {})[0])
        assert merged == (once, None) and any(isinstance(v, Training) for op in once.ops for _, v in op.kwargs)
        assert mod.training is True  # the view lost its flag, the module did not
    m = torchgraft.capture(ModeDependent().eval(), (torch.randn(2, 8),))
    body = m.root.body
    assert m.root.train_body is None
    assert any(isinstance(a, Training) for op in body.ops for a in (*op.args, *(v for _, v in op.kwargs)))


class ModeSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.training:]  # the flag in a slice: the modes' traces do not merge there


def test_forward_branching_on_training_asks_for_one_trace_per_mode() -> None:
    for mod in (ModeBranch(), ModeSlice()):
        with pytest.raises(ModeRead):
            trace_graph(mod, None, {}, {})
    m = torchgraft.capture(ModeSlice().eval(), (torch.randn(3, 8),))
    assert m.root.train_body is not None
    m = torchgraft.capture(ModeBranch().eval(), (torch.randn(2, 8),))
    assert m.root.train_body is not None and m.root.train_body != m.root.body


def test_math_on_sizes_traces_with_fx_and_matches_eager() -> None:
    mod = Scaled().eval()
    x = torch.randn(3, 8)
    m = torchgraft.capture(mod, (x,))
    assert m.report.methods[""] == "fx"
    out = torchgraft.emit(m).materialize()(x)
    torch.testing.assert_close(out, mod(x), rtol=1e-6, atol=1e-6)


def test_session_patches_once_and_restores_even_after_an_error() -> None:
    before = nn.Module.__dict__["__call__"], nn.Module.__dict__["__getattr__"]
    lin = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"), session():
        assert nn.Module.__dict__["__call__"] is not before[0]
        with session():  # re-entrant
            torch.testing.assert_close(lin(torch.ones(1, 2)), lin.weight.sum(1, keepdim=True).T + lin.bias)
            trace_graph(Scaled(), None, {}, {})
        raise RuntimeError("boom")
    assert (nn.Module.__dict__["__call__"], nn.Module.__dict__["__getattr__"]) == before


class Delegating(nn.Module):
    """The usual wrapper that hands unknown attributes to the wrapped model."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inner(x)
        return x * 2 if self.training else x


class DefaultRead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if getattr(self, "training", False) else x


class Swallows(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            doubled = bool(self.training)
        except Exception:  # noqa: BLE001 - user code that hides errors
            doubled = False
        return x * 2 if doubled else x


@pytest.mark.parametrize("cls", [Delegating, DefaultRead, Swallows])
def test_every_way_of_reading_training_keeps_both_modes(cls: type[nn.Module]) -> None:
    with pytest.raises(ModeRead):
        trace_graph(cls(), None, {}, {})
    model = cls()
    x = torch.randn(2, 4)
    emitted = torchgraft.emit(torchgraft.capture(model.eval(), (x,))).materialize()
    for mode in (True, False):
        torch.testing.assert_close(emitted.train(mode)(x), model.train(mode)(x), rtol=0, atol=0)


def test_fx_wrap_registered_during_a_capture_stays_registered(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tg_lazy_ops.py").write_text(
        "import torch.fx\n\n@torch.fx.wrap\ndef clamp_boxes(x):\n"
        "    if x.sum() > 0:\n        return x.clamp(0, 1)\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Lazy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import tg_lazy_ops  # registers its torch.fx.wrap on first import, inside the capture

            return tg_lazy_ops.clamp_boxes(x) + 1

    torchgraft.capture(Lazy(), (torch.randn(2, 4),))
    traced = torch.fx.symbolic_trace(Lazy())  # fx still knows the wrap: one call, not traced into
    assert [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"] == ["clamp_boxes", "add"]


@pytest.mark.parametrize("name", ["efficientnet_b0", "swin_t"])
def test_one_trace_for_both_modes_captures_what_two_merged_did(torchvision: Any, name: str,  # noqa: ANN401
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """StochasticDepth and Swin's attention pass ``self.training`` on: one trace, the same IR as two merged."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(2, 3, 64, 64) if name != "swin_t" else torch.randn(1, 3, 224, 224)
    once = torchgraft.capture(model, (x,))
    monkeypatch.setattr(fx_block._OwnCodeTracer, "create_arg", torch.fx.Tracer.create_arg)  # probe refused: per mode
    twice = torchgraft.capture(model, (x,))
    assert once.root == twice.root and str(once) == str(twice)

"""Per-block fx traces: one trace unless the forward reads self.training; math on sizes still traces."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.frontends.fx_block import ModeRead, trace_graph
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


def test_forward_reading_training_asks_for_one_trace_per_mode() -> None:
    mod = ModeDependent()
    with pytest.raises(ModeRead):
        trace_graph(mod, None, {}, {})
    assert mod.training is True  # the view lost its flag, the module did not
    m = torchgraft.capture(mod.eval(), (torch.randn(2, 8),))
    body = m.root.body
    assert m.root.train_body is None
    assert any(isinstance(a, Training) for op in body.ops for a in (*op.args, *(v for _, v in op.kwargs)))


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

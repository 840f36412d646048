"""Structure keeps the order of the forward's calls: a Parallel runs its branches one after another, so a
forward whose branches ran interleaved (``a = d1(x); b = d2(x); a = d3(a)``) keeps its Graph. Otherwise the
emitted model would draw dropout masks in another order (train) or let an in-place child write into a tensor
another branch still reads (eval). Found by review; the references are the eager modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.ir.graph import Graph


class Interleaved(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d1, self.d2, self.d3, self.d4 = (nn.Dropout(0.5) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        b = self.d2(x)
        a = self.d3(a)
        b = self.d4(b)
        return a + b


class InterleavedInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)  # eval: returns x itself
        self.relu = nn.ReLU(inplace=True)
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.drop(x)
        b = self.relu(x)  # writes into x, so into a
        a = self.lin(a)  # reads relu(x)
        return a * b


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).flatten(1)


def _emitted(model: nn.Module) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    captured = torchgraft.capture(model, (torch.randn(2, 8),))
    emitted = torchgraft.emit(captured).materialize()
    emitted.load_state_dict(model.state_dict(), strict=True)
    return emitted, captured.root.child("inner").body  # type: ignore[union-attr]


def test_interleaved_in_place_branch_eval() -> None:
    torch.manual_seed(0)
    model = Wrap(InterleavedInPlace()).eval()
    emitted, body = _emitted(model)
    emitted.eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x.clone())
        got = emitted(x.clone())
    assert isinstance(body, Graph) or torch.equal(got, expected), f"stored body {body}: differs from eager"
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


class NestedJoin(nn.Module):
    """Each branch is one call, but ``a + b * c`` with ``b`` run first becomes Parallel(Parallel(b, c), a):
    the lowering runs d2, d3, d1 where the forward ran d2, d1, d3."""

    def __init__(self) -> None:
        super().__init__()
        self.d1, self.d2, self.d3 = (nn.Dropout(0.5) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.d2(x)
        a = self.d1(x)
        c = self.d3(x)
        return a + b * c


class SharedNorm(nn.Module):
    """No randomness: a BatchNorm called in two interleaved branches updates its running stats in another order."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lin(x)
        b = self.bn(x)
        a = self.bn(a)
        return a + b


@pytest.mark.parametrize("inner", [Interleaved, NestedJoin])
def test_dropout_draws_keep_their_order_in_training(inner: type[nn.Module]) -> None:
    """Interleaved branches (d1, d2, d3, d4) and a nested join (d2, d1, d3) draw their masks as eager does."""
    model = Wrap(inner()).train()
    emitted, body = _emitted(model)
    emitted.train()
    x = torch.randn(3, 8)
    torch.manual_seed(1)
    expected = model(x.clone())
    torch.manual_seed(1)
    got = emitted(x.clone())
    torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=f"stored body: {body}")


def test_shared_norm_running_stats_train() -> None:
    torch.manual_seed(0)
    model = Wrap(SharedNorm()).train()
    emitted, body = _emitted(model)
    emitted.load_state_dict(model.state_dict(), strict=True)
    emitted.train()
    x = torch.randn(3, 8)
    model(x.clone())
    emitted(x.clone())
    torch.testing.assert_close(emitted.state_dict()["inner.bn.running_mean"],
                               model.state_dict()["inner.bn.running_mean"], msg=f"stored body: {body}")

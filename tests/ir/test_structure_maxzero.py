"""``torch.maximum(f(x), x)`` keeps its operand order: maximum and minimum return their first argument when the
two compare equal, so swapping them turns -0.0 into +0.0 (``1 / y``: -inf against inf). Max and min are not
commutative for structure (``CombineKind.commutative``). Found by review."""

from __future__ import annotations

import torch
from torch import nn

import torchgraft


class MaxSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(self.lin(x), x)


class Wrap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = MaxSkip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 / self.inner(x).flatten(1)


def test_maximum_operand_order_kept() -> None:
    model = Wrap().eval()
    captured = torchgraft.capture(model, (torch.randn(2, 4),))
    emitted = torchgraft.emit(captured).materialize().eval()
    emitted.load_state_dict(model.state_dict(), strict=True)
    x = torch.full((3, 4), -0.0)
    with torch.no_grad():
        expected = model(x.clone())  # 1 / maximum(+0, -0) = 1 / +0 = inf
        got = emitted(x.clone())
    body = captured.root.child("inner").body  # type: ignore[union-attr]
    torch.testing.assert_close(got, expected, msg=f"stored body: {body}")

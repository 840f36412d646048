"""One non-persistent buffer registered in two modules and updated in place stays one tensor in the
emitted model (as shared persistent buffers and tied weights do), so both see every update."""

from __future__ import annotations

import torch
from torch import nn

import torchgraft


class _Counter(nn.Module):
    def __init__(self, count: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("count", count, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return x * self.count


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = torch.zeros(1)
        self.a, self.b = _Counter(shared), _Counter(shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_a_shared_nonpersistent_buffer_stays_shared() -> None:
    model = _Two().eval()
    x = torch.ones(2)
    emitted = torchgraft.emit(torchgraft.capture(model, (x,))).materialize().eval()
    assert emitted.a.count is emitted.b.count
    model.a.count.zero_()
    emitted.a.count.zero_()
    for _ in range(3):  # three calls in a row: the shared count moves by two per call in both
        torch.testing.assert_close(emitted(x), model(x), rtol=0, atol=0)

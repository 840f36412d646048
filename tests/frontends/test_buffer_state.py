"""Buffers with state, three calls in a row, outputs and state_dict compared with eager after each: a buffer
registered in several modules stays one tensor (a tie), a buffer assigned in forward is kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchgraft

XS = [torch.randn(2, 4, generator=torch.Generator().manual_seed(1)),
      torch.randn(5, 4, generator=torch.Generator().manual_seed(2))]


def _assert_same_stateful(model: nn.Module) -> None:
    ref = copy.deepcopy(model)  # keeps buffer sharing (checked in the tests)
    em = torchgraft.emit(torchgraft.capture(model, (XS[0],))).materialize()
    ref.eval()
    em.eval()
    for x in XS:
        for _ in range(3):
            torch.testing.assert_close(em(x), ref(x), rtol=1e-5, atol=1e-5)
            got = em.state_dict()
            for k, v in ref.state_dict().items():
                torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-5, msg=f"state {k}")


class Counts(nn.Module):
    def __init__(self, buf: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b", buf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.b.add_(1)
        return x * self.b


class SharesABuffer(nn.Module):
    """One tensor registered in the parent and two children; the emitted model gives each its own copy."""

    def __init__(self) -> None:
        super().__init__()
        shared = torch.zeros(4)
        self.register_buffer("b", shared)
        self.c1, self.c2 = Counts(shared), Counts(shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(x)) + self.b


def test_buffer_shared_between_modules_stays_shared() -> None:
    model = SharesABuffer()
    ref = copy.deepcopy(model)
    assert ref.c1.b is ref.b and ref.c2.b is ref.b
    _assert_same_stateful(model)


class KeepsLast(nn.Module):
    """Reassigns a buffer it never reads: the emitted forward must keep the assignment (the state updates)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("last", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.last = y.mean(0).detach()
        return y


class Wraps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = KeepsLast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x) * 2


def test_buffer_reassigned_but_not_read_is_kept() -> None:
    torch.manual_seed(0)
    _assert_same_stateful(KeepsLast())  # control: alone, its source is copied and keeps the assignment
    torch.manual_seed(0)
    _assert_same_stateful(Wraps())  # as a child too


class Smooths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("last", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.last = self.last * 0.5 + y.mean(0).detach()
        return y + self.last


class ReadsAroundChild(nn.Module):
    """fx caches a buffer's get_attr proxy by name: the read after the child call reuses the read before it
    (emitted: ``last = self.c.last; return self.c(x) + last - last``)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = Smooths()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.c.last
        y = self.c(x)
        return y + self.c.last - before


@pytest.mark.xfail(strict=True, reason="known: fx gives every read of one buffer one node, so a read after a child "
                   "call that replaced the buffer still sees the old tensor (seen in review; not fixed)")
def test_buffer_read_before_and_after_a_child_that_reassigns_it() -> None:
    torch.manual_seed(0)
    _assert_same_stateful(Smooths())  # control: the child alone is faithful
    torch.manual_seed(0)
    _assert_same_stateful(ReadsAroundChild())


class _HalvesItsBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / 10 ** torch.arange(4.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inv_freq.mul_(0.5)
        return x * self.inv_freq.sum()


class _Parent(torch.nn.Module):
    """Its forward is traced by the fallback tracer (``hasattr``), which runs the child for real."""

    def __init__(self) -> None:
        super().__init__()
        self.m = _HalvesItsBuffer()
        self.a = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.m(x), self.a(x)) if hasattr(self, "a") else (self.m(x), x)


def test_a_buffer_written_in_forward_starts_from_the_users_value() -> None:
    """Seen in review: the typing replay of the IR wrote into the captured constant itself, so the emitted
    model started from a halved buffer and every output was off by its first call."""
    torch.manual_seed(0)
    model, x = _Parent(), torch.randn(2, 3)
    start = model.m.inv_freq.clone()
    emitted = torchgraft.emit(torchgraft.capture(model, (x,))).materialize()
    assert torch.equal(model.m.inv_freq, start)  # the user's model is untouched
    for _ in range(3):  # state: three calls in a row, each halving again
        for got, want in zip(emitted(x), model(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

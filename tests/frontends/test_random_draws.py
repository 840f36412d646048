"""A random draw with no traced argument (``torch.rand(3)``) is not baked: torch.fx would run it once at
trace time and keep its result as a constant, so every call of the emitted model would add the same
noise. Such a forward is traced by the fallback tracer, which records the draw; with the same seed the
emitted model draws what eager draws (``torch.equal``), and two calls draw differently."""

from __future__ import annotations

import random

import torch
from torch import nn

import torchgraft


class _Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + torch.rand(3)


def test_a_draw_without_traced_arguments_is_drawn_on_every_call() -> None:
    torch.manual_seed(0)
    model = _Noisy().eval()
    captured = torchgraft.capture(model, (torch.randn(2, 3),))
    assert captured.report.methods[""] == "trace"
    assert not torchgraft.emit(captured).constants  # no baked noise
    emitted = torchgraft.emit(captured).materialize().eval()
    x = torch.randn(4, 3)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)
    assert torch.equal(emitted(x), expected)
    assert not torch.equal(emitted(x), emitted(x))


def test_capture_leaves_the_rng_where_it_was() -> None:
    model, x = _Noisy(), torch.randn(2, 3)
    state = torch.random.get_rng_state()
    torchgraft.capture(model, (x,))
    assert torch.equal(torch.random.get_rng_state(), state)


class _Generated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + torch.rand(3, generator=self.g)


class _PythonRandom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * (1.0 + random.random())


def test_draws_from_a_generator_or_pythons_random_are_not_baked() -> None:
    for cls in (_Generated, _PythonRandom):
        torch.manual_seed(0)
        model = cls().eval()
        x = torch.randn(2, 3)
        emitted = torchgraft.emit(torchgraft.capture(model, (x,))).materialize().eval()
        assert not torch.equal(emitted(x), emitted(x)), cls.__name__  # drawn anew on every call, as in eager

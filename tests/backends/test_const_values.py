"""``backends.torch.const_values``: a non-persistent buffer that a constructor writes exactly is built that
way and left out of the constants file; every other constant is still loaded. Round trips compare every
buffer bit for bit with the original."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import torchgraft
from torchgraft.backends.torch.const_values import constructor
from torchgraft.backends.torch.ctor import Call, Raw


@pytest.mark.parametrize(("value", "head"), [
    (torch.zeros(2, 3), "torch.zeros"),
    (torch.zeros(4, dtype=torch.int64), "torch.zeros"),
    (torch.zeros(3, dtype=torch.bool), "torch.zeros"),
    (torch.ones(2, 2, dtype=torch.float16), "torch.ones"),
    (torch.arange(6), "torch.arange(6)"),
    (torch.arange(6).reshape(1, 6), "torch.arange(6).reshape(1, 6)"),
    (torch.arange(4, dtype=torch.int32).reshape(2, 2), "torch.arange(4, dtype=torch.int32).reshape(2, 2)"),
])
def test_constructors_that_write_the_value(value: torch.Tensor, head: str) -> None:
    expr = constructor(value)
    assert expr is not None
    assert (expr.head if isinstance(expr, Call) else expr.text if isinstance(expr, Raw) else None) == head


@pytest.mark.parametrize("value", [
    torch.tensor([0.0, -0.0]),  # a negative zero: torch.zeros would write +0.0
    torch.arange(6).flip(0),
    torch.arange(6.0),  # floats are not written as a range
    torch.tensor([1, 1, 2]),
    torch.randn(3),
])
def test_anything_else_stays_in_the_file(value: torch.Tensor) -> None:
    assert constructor(value) is None


class _Buffers(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("positions", torch.arange(n).expand((1, -1)), persistent=False)
        self.register_buffer("types", torch.zeros(1, n, dtype=torch.long), persistent=False)
        self.register_buffer("table", torch.randn(n), persistent=False)
        self.proj = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x + self.table) + self.positions + self.types


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _Buffers(4), _Buffers(4)
        self.b.positions = torch.arange(4).flip(0)[None]  # this instance's range is not a range: it is loaded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_round_trip_keeps_every_buffer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Two().eval()
    x = torch.randn(2, 4)
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    assert "torch.arange(4).reshape(1, 4)" in code.source
    code.save(tmp_path)
    assert sorted(load_file(str(tmp_path / "constants.safetensors"))) == ["a.table", "b.positions", "b.table"]
    emitted = code.materialize().eval()
    for name, buffer in model.named_buffers():
        assert torch.equal(emitted.get_buffer(name), buffer), name
    torch.testing.assert_close(emitted(x), model(x), rtol=1e-6, atol=1e-6)


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4).to(torch.bfloat16)
        self.register_buffer("offset", torch.zeros(4), persistent=False)  # float32 zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).float() + self.offset


def test_a_written_buffer_does_not_change_the_dtype_build_casts_to() -> None:
    model = _Mixed().eval()
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    captured = torchgraft.capture(model, (x,))
    with pytest.raises(torchgraft.errors.EmitError, match="mixes bfloat16, float32"):
        torchgraft.emit(captured)  # as with the buffer loaded from the file: never a bfloat16 offset

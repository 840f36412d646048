"""``ir.dtypes``: layers are rebuilt in their state's dtype, or emission refuses.

A bfloat16 model's layers used to be rebuilt in float32 (``nn.Linear(4, 2)``) and the checkpoint cast
into them: the emitted model computed in float32, and a pass re-typed it as float32, both without a word.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.errors import EmitError
from torchgraft.passes import run


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 4), nn.ReLU(), nn.Linear(4, 2)).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, torch.float16])
def test_a_model_in_one_dtype_is_built_in_it(dtype: torch.dtype) -> None:
    model = _model(dtype)
    ids = torch.randint(0, 10, (3, 5))
    captured = torchgraft.capture(model, (ids,))
    code = torchgraft.emit(captured)
    assert f".to({dtype})" in code.source
    emitted = code.materialize().eval()
    assert {p.dtype for p in emitted.parameters()} == {dtype}
    for b in (1, 4):
        ids = torch.randint(0, 10, (b, 7))
        got, want = emitted(ids), model(ids)
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    result = run(captured, "swap-activation{from=relu to=silu}")
    assert result.model.output_type == captured.output_type  # re-typed in the same dtype


def test_a_float32_model_is_built_as_constructed() -> None:
    assert ".to(" not in torchgraft.emit(torchgraft.capture(_model(torch.float32), (torch.zeros(2, 3).long(),))).source


def test_layers_in_mixed_dtypes_are_refused() -> None:
    mixed = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2).to(torch.bfloat16)})  # one cast cannot do

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = mixed

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m["b"](self.m["a"](x).to(torch.bfloat16))

    captured = torchgraft.capture(Two().eval(), (torch.randn(2, 2),))
    with pytest.raises(EmitError, match=r"layer state 'm\.b\.bias' is bfloat16 .* one dtype"):
        torchgraft.emit(captured)

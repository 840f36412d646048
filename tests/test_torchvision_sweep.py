"""Every torchvision classifier: capture -> emit -> save -> fresh-process load() matches eager.

One capture per model; every check runs on it. Weights go to a temporary folder that
is removed after each model (vit_h_14 alone is 2.5 GB).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from zoo import import_torchvision, input_size, run_fresh

import torchgraft

tv = import_torchvision()
MODELS = tv.models.list_models(module=tv.models)


def _randomize_zero_params(model: torch.nn.Module) -> None:
    """Some heads are zero-initialised (vit); give them random values so outputs are not all 0."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tv.models.get_model(name).eval()
    _randomize_zero_params(model)
    size = input_size(name)
    x2 = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x2)
    original_keys = list(model.state_dict())

    ir_model = torchgraft.capture(model, (x2,))
    assert not ir_model.report.opaque, ir_model.report.summary()
    code = torchgraft.emit(ir_model)
    assert "getattr(self" not in code.source
    code.save(tmp_path)

    out = run_fresh(tmp_path, {"b2": x2})["b2"]
    tol = 1e-5 * ref.abs().max().item()
    torch.testing.assert_close(out, ref, atol=tol, rtol=0)

    rebuilt = code.materialize(load_weights=False, device="meta")
    assert list(rebuilt.state_dict()) == original_keys
    rebuilt.load_state_dict(model.state_dict(), strict=True, assign=True)
    assert list(model.state_dict()) == original_keys  # capture did not change the model

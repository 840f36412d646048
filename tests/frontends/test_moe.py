"""Mixture-of-experts transformers models (tiny Mixtral, Qwen2-MoE) at default settings.

Routing (softmax, top-k) and expert dispatch come out as torch code (``frontends.moe``): the
emitted model, in a fresh process without torchgraft, equals eager within 1e-4 x max|output| at the
example and at another batch size and length (other tokens reach other experts); the original
state_dict loads strict; the user's config keeps its experts implementation.
"""

from __future__ import annotations

import pytest
from families import TRANSFORMERS
from family_check import check_case
from zoo import import_torchvision

import torchgraft

import_torchvision()
transformers = pytest.importorskip("transformers")
CASES = {c.name: c for c in TRANSFORMERS}


@pytest.mark.parametrize("name", ["Mixtral", pytest.param("Qwen2-MoE", marks=pytest.mark.slow)])
def test_moe_round_trip(name: str) -> None:
    outcome = check_case(CASES[name])
    assert outcome.matches, outcome


def test_experts_run_as_torch_code_and_config_is_restored() -> None:
    case = CASES["Mixtral"]
    model = case.build().eval()
    before = model.config._experts_implementation
    args, kwargs = case.calls()[0]
    code = torchgraft.emit(torchgraft.capture(model, args, kwargs))
    assert model.config._experts_implementation == before
    assert "torch.where(top_k_index == 3)" in code.source  # every expert dispatched, in torch code
    imports = [line for line in code.source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "transformers" in line], imports

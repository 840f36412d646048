"""The families of ``tests/families.py`` (the README's coverage table), each captured once and checked.

Each case: capture -> emit -> save -> model.py is ruff-format and ruff-check clean -> the original
state_dict loads strict=True with the same keys -> a fresh process without torchgraft runs the example
and another batch size or length -> equal to eager within 1e-4 x max|output| (1e-3 for detection, whose
eager roi_align is a torch.compile-d kernel here) (``family_check``). The few models listed in ``REFUSED`` must be
refused cleanly (a torchgraft error naming the module path and what to do), never with a raw
``TypeError``/``RuntimeError``; every other model must match. Weights live in a temporary folder
removed after each model.
"""

from __future__ import annotations

import pytest
from families import Case, all_cases
from family_check import check_case

REFUSED: dict[str, str] = {
    # model -> why it is refused today (kept in step with the README's coverage table)
}

CASES = all_cases()


def _param(case: Case) -> object:
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else [])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_family_case(case: Case) -> None:
    outcome = check_case(case)
    assert not outcome.error.startswith(("raw ", "eager model fails")), outcome.error
    if case.name in REFUSED:
        assert outcome.refused and not outcome.matches, outcome
        assert "at " in outcome.error or "module" in outcome.error, outcome.error  # names where
    else:
        assert outcome.matches, outcome

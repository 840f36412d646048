"""Shared fixtures: seeded randomness, torchvision importable on CPU-only torch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def torchvision():  # noqa: ANN201
    """torchvision, imported the way DESIGN.md describes for this CPU-only torch."""
    from zoo import import_torchvision

    return import_torchvision()

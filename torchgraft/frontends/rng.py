"""The caller's random state, kept: capture's runs of the model draw nothing the caller sees."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def cuda_devices() -> list[int]:
    """CUDA devices whose generators a run may advance (none unless CUDA is already in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Run the body with the CPU generator, and every initialised CUDA one, put back afterwards.

    Dropout, RReLU or ``torch.rand`` in a train-mode forward draw from the global generators;
    capture runs the model, and the caller's next draw must not depend on that.
    """
    with torch.random.fork_rng(devices=cuda_devices()):
        yield

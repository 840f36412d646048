"""Why a train-mode run fails on a batch of one: BatchNorm needs more than one value per channel.

``check`` runs both modules in train mode on the caller's example. A BatchNorm layer in
train mode cannot normalise a single value per channel (torch raises ``ValueError``), so
nothing can be compared; ``one_value_batchnorm`` finds the layer, for a clear error.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchgraft.errors import CheckError
from torchgraft.probes import Inputs, run_copy


class _Found(Exception):
    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        super().__init__(path)
        self.path, self.shape = path, shape


def _pre_hook(path: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if module.training and isinstance(x, torch.Tensor) and x.dim() >= 2:
            if x.shape[0] * math.prod(x.shape[2:]) == 1:
                raise _Found(path, tuple(x.shape))
    return hook


def _install(model: nn.Module) -> None:
    for path, sub in model.named_modules():
        if isinstance(sub, _BatchNorm):
            sub.register_forward_pre_hook(_pre_hook(path))


def one_value_batchnorm(module: nn.Module, inputs: Inputs, seed: int) -> tuple[str, tuple[int, ...]] | None:
    """The path and input shape of the first train-mode BatchNorm fed one value per channel, if any."""
    if not any(isinstance(m, _BatchNorm) for m in module.modules()):
        return None
    try:
        run_copy(module, "train", inputs, seed, install=_install)
    except _Found as found:
        return found.path, found.shape
    except Exception:  # noqa: BLE001 - it failed for some other reason: not this diagnosis
        return None
    return None


def train_batch_error(module: nn.Module, which: str, inputs: Inputs, seed: int) -> CheckError | None:
    """A ``CheckError`` saying why train mode cannot be compared, when a BatchNorm is the cause."""
    found = one_value_batchnorm(module, inputs, seed)
    if found is None:
        return None
    path, shape = found
    return CheckError(
        f"check: cannot compare in train mode: the {which}'s BatchNorm at {path or '(root module)'!r} gets one "
        f"value per channel (input shape {shape}), and BatchNorm in train mode needs more than one (batch > 1). "
        "Pass a bigger batch, or check eval mode only (modes=('eval',)).")

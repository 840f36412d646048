"""The module a system's losses are captured through: the models as children, the losses as forward.

``SystemLosses(models, losses)`` holds the models (emitted and materialized, named as in the
system) and calls every loss function on itself and the batch; its ``forward(**batch)``
returns the losses as a tuple, in order. Capturing it traces the loss functions exactly as a
forward is traced (torch.fx, else the run-time trace, with the same guards); the functions are
called, never read as source or evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from torchgraft.system.errors import SystemSpecError

LossFn = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


class SystemLosses(nn.Module):
    """``forward(**batch)`` -> ``tuple(fn(self, batch) for fn in losses)``, the models as children.

    >>> probe = SystemLosses({"net": nn.Linear(2, 1)}, (("net", lambda m, b: m.net(b["x"]).mean()),))
    >>> probe(x=torch.ones(3, 2)).__class__.__name__
    'tuple'
    """

    def __init__(self, models: Mapping[str, nn.Module], losses: tuple[tuple[str, LossFn], ...]) -> None:
        super().__init__()
        for name, module in models.items():
            self.add_module(name, module)
        self.loss_fns = tuple(fn for _, fn in losses)

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(fn(self, batch) for fn in self.loss_fns)


def check_eager(probe: SystemLosses, names: tuple[str, ...], batch: dict[str, torch.Tensor],
                trains: Mapping[str, tuple[str, ...]]) -> None:
    """Run each loss once (plain torch, gradients on) and refuse what cannot train: a loss that names
    no model of the system, is not a scalar tensor, or reaches no trainable parameter of its model.

    >>> check_eager(probe, ("net",), {"x": torch.ones(3, 2)}, {"net": ("weight",)})  # doctest: +SKIP
    """
    models = [n for n, _ in probe.named_children()]
    for name, fn in zip(names, probe.loss_fns):
        try:
            with torch.enable_grad():
                value = fn(probe, batch)
        except AttributeError as e:
            missing = _missing_model(e, models)
            if missing is None:
                raise
            raise SystemSpecError(f"loss {name!r} uses m.{missing}, but the system has no model {missing!r}; its "
                                  f"models are {models}. Add it to models= or fix the loss") from e
        _check_value(name, value, probe, trains)


def _missing_model(e: AttributeError, models: list[str]) -> str | None:
    """The attribute a loss read from the probe that is no model (from nn.Module's message), else None."""
    head = f"'{SystemLosses.__name__}' object has no attribute '"
    text = str(e)
    if not text.startswith(head):
        return None
    name = text[len(head):].rstrip("'")
    return name if name not in models else None


def _check_value(name: str, value: object, probe: SystemLosses, trains: Mapping[str, tuple[str, ...]]) -> None:
    if not isinstance(value, torch.Tensor):
        raise SystemSpecError(f"loss {name!r} returned {type(value).__name__}, not a tensor; return a scalar "
                              "tensor (e.g. F.mse_loss(...))")
    if value.dim() != 0 or not value.is_floating_point():
        raise SystemSpecError(f"loss {name!r} returned a {str(value.dtype).removeprefix('torch.')} tensor of shape "
                              f"{tuple(value.shape)}, not a floating-point scalar; reduce it (e.g. .mean() or "
                              "reduction='mean')")
    module = probe.get_submodule(name)
    params = [module.get_parameter(k) for k in trains.get(name, ())]
    reached = value.requires_grad and any(
        g is not None for g in torch.autograd.grad(value, params, retain_graph=False, allow_unused=True))
    if not reached:
        raise SystemSpecError(f"loss {name!r} does not depend on any trainable parameter of model {name!r} "
                              "(no gradient reaches them): its optimizer would never change the model. Compute "
                              f"the loss through m.{name}(...) without .detach(), or check trainable=")

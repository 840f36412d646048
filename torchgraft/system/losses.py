"""Capture a system's loss functions into one ``ir.Model``: the ``System`` Block.

The models are emitted and materialized as children of a ``SystemLosses`` (named as in the
system), the probe is captured on the example batch like any forward (``torchgraft.capture``:
torch.fx, else the run-time trace, with the same guards), and its children, re-captured copies,
are swapped back for the models' own IR roots (their state_dict keys must agree). A loss whose
Python branches on tensor values cannot be traced: capture would copy its source, which a
System refuses (nothing of a loss function is evaluated or copied as text).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from torchgraft.backends.torch.emitter import emit
from torchgraft.errors import CaptureError
from torchgraft.frontends.capture import capture
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block
from torchgraft.system.merge import merged
from torchgraft.system.probe import LossFn, SystemLosses, check_eager

TRACED = ("fx", "trace")
"""Capture methods that keep a loss as a graph of torch calls (``source``/``opaque`` do not)."""


def materialized(models: Mapping[str, Model]) -> dict[str, torch.nn.Module]:
    """Each model emitted and built with its weights (``requires_grad`` as in the model).

    >>> materialized({"net": tg.build(ir.Linear(2, 3), ir.TensorType(("N", 2)))})  # doctest: +SKIP
    {'net': Linear(in_features=2, out_features=3, bias=True)}
    """
    return {name: emit(model).materialize() for name, model in models.items()}


def capture_losses(models: Mapping[str, Model], losses: Mapping[str, LossFn], batch: dict[str, torch.Tensor],
                   trains: Mapping[str, tuple[str, ...]], frozen: tuple[str, ...]) -> Model:
    """The ``System`` model: the models as children, ``forward(**batch)`` returning the losses in order.

    ``trains`` are the trainable keys per model (checked to receive gradients), ``frozen`` the
    system-level keys ``build()`` freezes.

    >>> capture_losses({"net": net}, {"net": loss_fn}, batch, {"net": ("weight",)}, ()).root.cls.name  # doctest: +SKIP
    'System'
    """
    modules = materialized(models)
    device = next(iter(batch.values())).device
    if device.type != "cpu":  # the losses are traced where the batch lives
        modules = {n: m.to(device) for n, m in modules.items()}
    names = tuple(losses)
    probe = SystemLosses(modules, tuple(losses.items()))
    check_eager(probe, names, batch, trains)
    try:
        captured = capture(probe, (), batch)
    except CaptureError as e:
        raise _culprit(modules, losses, batch, e) from e
    if not _traced(captured):
        raise _culprit(modules, losses, batch, None)
    return merged(captured, models, frozen)


def _traced(model: Model) -> bool:
    return isinstance(model.root, Block) and model.root.method in TRACED


def _culprit(modules: Mapping[str, torch.nn.Module], losses: Mapping[str, LossFn], batch: dict[str, torch.Tensor],
             error: CaptureError | None) -> CaptureError:
    """The error naming the first loss that cannot be captured alone (else the losses together)."""
    for name, fn in losses.items():
        try:
            alone = capture(SystemLosses(modules, ((name, fn),)), (), batch)
        except CaptureError as e:
            return CaptureError(f"loss {name!r} could not be captured: {e}", e.path)
        if not _traced(alone):
            return _untraced(name, alone)
    if error is not None:
        return CaptureError(f"the losses {list(losses)} could not be captured together: {error}", error.path)
    return CaptureError(f"the losses {list(losses)} could not be traced together; capture each separately "
                        "to find out why")


def _untraced(name: str, model: Model) -> CaptureError:
    reason = model.report.reasons.get("", "") if model.report is not None else ""
    return CaptureError(
        f"loss {name!r} cannot be captured as a graph of torch calls ({reason or 'its trace failed'}). A loss "
        "is traced, never copied as source: remove Python control flow on tensor values (if loss > 0, "
        ".item(), .tolist()) and use torch.where / masks instead", "")

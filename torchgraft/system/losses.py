"""Capture a system's loss functions: one ``ir.Model`` (the ``System`` Block) and each loss's own graph.

The models are emitted and materialized as children of a ``SystemLosses`` (named as in the
system); for each loss, a probe with that loss as its forward is captured on the example batch
like any forward (``torchgraft.capture``: torch.fx, else the run-time trace, with the same
guards). The captures are combined (``combine.py``: the System's forward runs every loss) and
the probe's children, re-captured copies, are swapped back for the models' own IR roots (their
state_dict keys must agree). A loss whose
Python branches on tensor values cannot be traced: capture would copy its source, which a
System refuses (nothing of a loss function is evaluated or copied as text).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from torchgraft.backends.torch.emitter import emit
from torchgraft.errors import CaptureError
from torchgraft.frontends.capture import capture
from torchgraft.frontends.guards import guards_of
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block
from torchgraft.system.combine import LossGraph, combined
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
                   trains: Mapping[str, tuple[str, ...]], frozen: tuple[str, ...]
                   ) -> tuple[Model, dict[str, LossGraph]]:
    """The ``System`` model (the models as children, ``forward(**batch)`` returning the losses in order)
    and each loss's own graph (what its ``<model>_loss`` method computes).

    ``trains`` are the trainable keys per model (checked to receive gradients), ``frozen`` the
    system-level keys ``build()`` freezes. Each loss is captured alone, on a probe holding every model.

    >>> capture_losses({"net": net}, {"net": loss_fn}, batch, {"net": ("weight",)}, ())[0].root.cls.name
    ... # doctest: +SKIP
    'System'
    """
    modules = materialized(models)
    device = next(iter(batch.values())).device
    if device.type != "cpu":  # the losses are traced where the batch lives
        modules = {n: m.to(device) for n, m in modules.items()}
    check_eager(SystemLosses(modules, tuple(losses.items())), tuple(losses), batch, trains)
    captures = {name: _captured(modules, name, fn, batch) for name, fn in losses.items()}
    model, graphs = combined(captures, tuple(models))
    system = merged(model, models, frozen)
    if system.report is not None:  # the guards the emitted code makes: the models' own and the losses'
        system = system.with_root(system.root, report=dataclasses.replace(system.report,
                                                                          guards=guards_of(system.root)))
    return system, graphs


def _captured(modules: Mapping[str, torch.nn.Module], name: str, fn: LossFn, batch: dict[str, torch.Tensor]) -> Model:
    """Loss ``name`` captured alone (a graph of torch calls), else the error naming it."""
    try:
        captured = capture(SystemLosses(modules, ((name, fn),)), (), batch)
    except CaptureError as e:
        raise CaptureError(f"loss {name!r} could not be captured: {e}", e.path) from e
    if not (isinstance(captured.root, Block) and captured.root.method in TRACED):
        raise _untraced(name, captured)
    return captured


def _untraced(name: str, model: Model) -> CaptureError:
    reason = model.report.reasons.get("", "") if model.report is not None else ""
    return CaptureError(
        f"loss {name!r} cannot be captured as a graph of torch calls ({reason or 'its trace failed'}). A loss "
        "is traced, never copied as source: remove Python control flow on tensor values (if loss > 0, "
        ".item(), .tolist()) and use torch.where / masks instead", "")

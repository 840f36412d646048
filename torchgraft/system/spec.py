"""``System``: several models, their losses and optimizers, captured into one emittable model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torchgraft.backends.torch.names import is_plain_attr
from torchgraft.ir.model import Model
from torchgraft.system.combine import LossGraph
from torchgraft.system.errors import SystemSpecError
from torchgraft.system.losses import capture_losses
from torchgraft.system.options import OptimizerLike, OptimizerSpec, optimizer_spec
from torchgraft.system.probe import LossFn
from torchgraft.system.template import METHODS, loss_method_names
from torchgraft.system.trainable import TrainableLike, frozen_for_system, trainable_keys


@dataclass(frozen=True, slots=True, eq=False)
class System:
    """A training system: named models, a loss and an optimizer per trained model, captured on construction.

    ``models`` are ``ir.Model``s (built, captured, composed, after passes). ``losses[name]`` is a
    plain-torch function ``fn(m, batch) -> scalar tensor`` that reaches the models as
    ``m.<name>``; it is traced on ``example_batch`` (a dict of tensors) like a forward, with the same
    guards, never evaluated as text. Each model with a loss gets ``optimizers[name]``, a
    torch.optim class name with literal options (``("Adam", {"lr": 2e-4})``), over the
    parameters ``trainable`` selects (``"*"``, ``"generator.*"``, ``{"net": "head.*"}``: see
    ``system.trainable``) that are not frozen. Every other parameter is frozen in the emitted
    ``build()``; a model without a loss does not train (frozen, and kept in eval mode by the
    emitted ``train()``). ``loss_weights`` scale the losses in the system's ``loss(batch)``
    (default 1.0 each) and in each model's step.

    ``tg.emit(system)`` writes ``system.py``: the models' classes and ``class System(nn.Module)``,
    with one method per loss (``loss_methods``: ``{"generator": "generator_loss", ...}``).

    >>> gan = System(models={"generator": G, "discriminator": D},  # doctest: +SKIP
    ...              losses={"generator": g_loss, "discriminator": d_loss},
    ...              optimizers={"generator": ("Adam", {"lr": 2e-4}), "discriminator": "Adam"},
    ...              example_batch={"z": torch.randn(4, 8), "x": torch.randn(4, 16)})
    """

    models: Mapping[str, Model]
    losses: Mapping[str, LossFn]
    optimizers: Mapping[str, OptimizerLike]
    example_batch: Mapping[str, torch.Tensor]
    trainable: TrainableLike = "*"
    loss_weights: Mapping[str, float] | None = None
    model: Model = field(init=False, repr=False)
    """The captured ``System`` model: the models as children, ``forward(**batch)`` the losses in order."""
    loss_graphs: dict[str, LossGraph] = field(init=False, repr=False)
    """Each loss's own captured graph, over ``model``'s root: what the emitted ``<name>_loss`` method runs."""
    loss_methods: dict[str, str] = field(init=False, repr=False)
    """The emitted method computing each loss: ``<name>_loss``, made unique against the class's other names."""
    specs: dict[str, OptimizerSpec] = field(init=False, repr=False)
    weights: dict[str, float] = field(init=False, repr=False)
    trains: dict[str, tuple[str, ...]] = field(init=False, repr=False)
    """Per trained model, the keys (within it) of the parameters its optimizer steps."""

    def __post_init__(self) -> None:
        for name in ("models", "losses", "optimizers"):  # copies: a later change to the caller's dict changes nothing
            given = getattr(self, name)
            object.__setattr__(self, name, dict(given) if isinstance(given, Mapping) else given)
        _check_models(self.models)
        _check_keys(self.models, self.losses, self.optimizers)
        batch = _check_batch(self.example_batch)
        specs = {n: optimizer_spec(self.optimizers[n], n) for n in self.losses}
        weights = _weights(self.loss_weights, tuple(self.losses))
        trains = trainable_keys(self.models, tuple(self.losses), self.trainable)
        frozen = frozen_for_system(self.models, trains)
        model, graphs = capture_losses(self.models, self.losses, batch, trains, frozen)
        methods = loss_method_names(model, tuple(self.losses))
        for name, value in (("specs", specs), ("weights", weights), ("trains", trains), ("model", model),
                            ("loss_graphs", graphs), ("loss_methods", methods)):
            object.__setattr__(self, name, value)

    def trainable_parameters(self) -> dict[str, tuple[str, ...]]:
        """System-level keys of the parameters each optimizer steps.

        >>> gan.trainable_parameters()["generator"][:2]  # doctest: +SKIP
        ('generator.0.weight', 'generator.0.bias')
        """
        return {n: tuple(f"{n}.{k}" for k in keys) for n, keys in self.trains.items()}


def _check_models(models: Mapping[str, Model]) -> None:
    if not isinstance(models, Mapping) or not models:
        raise SystemSpecError("models must be a non-empty dict of name -> ir.Model")
    for name, model in models.items():
        if not isinstance(name, str) or not is_plain_attr(name) or name in METHODS or name.startswith("_"):
            raise SystemSpecError(f"model name {name!r} cannot be an attribute of the emitted System: use a plain "
                                  f"identifier that is not private, not an nn.Module attribute and not one of "
                                  f"{sorted(METHODS)}")
        if not isinstance(model, Model):
            raise SystemSpecError(f"models[{name!r}] is a {type(model).__name__}, not an ir.Model: capture it "
                                  "(tg.capture(module, args)) or build it (tg.build(...)) first")


def _check_keys(models: Mapping[str, Model], losses: Mapping[str, Any], optimizers: Mapping[str, Any]) -> None:
    for what, given in (("losses", losses), ("optimizers", optimizers)):
        if not isinstance(given, Mapping) or not given:
            raise SystemSpecError(f"{what} must be a non-empty dict keyed by model name ({list(models)})")
        unknown = [k for k in given if k not in models]
        if unknown:
            raise SystemSpecError(f"{what} name {unknown}, which are not models; the models are {list(models)}. "
                                  f"Key {what} by the model they train")
    if set(losses) != set(optimizers):
        raise SystemSpecError(f"losses and optimizers must name the same models: losses {list(losses)}, "
                              f"optimizers {list(optimizers)}; each trained model needs both (a model with "
                              "neither does not train)")
    bad = [k for k, fn in losses.items() if not callable(fn)]
    if bad:
        raise SystemSpecError(f"losses[{bad[0]!r}] is not a function; give fn(m, batch) -> scalar tensor")


def _check_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping) or not batch:
        raise SystemSpecError("example_batch must be a non-empty dict of name -> tensor (one training batch)")
    bad = [k for k, v in batch.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SystemSpecError(f"example_batch entries {bad!r} must be str -> torch.Tensor")
    return dict(batch)


def _weights(given: Mapping[str, float] | None, names: tuple[str, ...]) -> dict[str, float]:
    given = dict(given or {})
    unknown = [k for k in given if k not in names]
    if unknown:
        raise SystemSpecError(f"loss_weights name {unknown}, which have no loss; the losses are {list(names)}")
    out = {}
    for name in names:
        w = given.get(name, 1.0)
        if type(w) not in (int, float) or not math.isfinite(w):
            raise SystemSpecError(f"loss_weights[{name!r}] must be a finite number, got {w!r}")
        out[name] = float(w)
    return out

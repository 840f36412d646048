"""Optimizer specs of a training system: a torch.optim class name and literal options.

Nothing is evaluated: the name must be one of ``torch.optim``'s optimizer classes, the option
names its constructor's keyword arguments, the values plain literals (numbers, bools, None,
tuples of numbers), which the emitter writes with ``repr`` of their exact built-in type.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch

from torchgraft.system.errors import SystemSpecError

Literal = Union[bool, int, float, None, tuple[Union[int, float], ...]]
OptimizerLike = Union[str, type, tuple[Union[str, type], Mapping[str, Any]]]

UNSUPPORTED = {"LBFGS": "it needs a closure that re-evaluates the loss at every step(), which training_step "
                        "does not pass",
               "SparseAdam": "it only takes sparse gradients (nn.Embedding(sparse=True))"}
"""torch.optim classes training_step cannot drive, with the reason."""


def optimizer_names() -> tuple[str, ...]:
    """The torch.optim optimizer classes a System may name (sorted).

    >>> "Adam" in optimizer_names()
    True
    """
    found = [n for n in dir(torch.optim) if not n.startswith("_")]
    return tuple(sorted(n for n in found if isinstance(getattr(torch.optim, n), type)
                        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                        and n != "Optimizer" and n not in UNSUPPORTED))


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """One model's optimizer: ``torch.optim.<name>(params, **options)``, checked on construction.

    >>> OptimizerSpec("Adam", (("lr", 2e-4),)).code("params")
    'torch.optim.Adam(params, lr=0.0002)'
    """

    name: str
    options: tuple[tuple[str, Literal], ...] = ()

    def __post_init__(self) -> None:
        valid = optimizer_names()
        if self.name in UNSUPPORTED:
            raise SystemSpecError(f"optimizer {self.name!r} cannot be used: {UNSUPPORTED[self.name]}. "
                                  f"Use one of {', '.join(valid)}")
        if self.name not in valid:
            raise SystemSpecError(f"unknown optimizer {self.name!r}: name a torch.optim optimizer class, one of "
                                  f"{', '.join(valid)}")
        accepted = _keywords(getattr(torch.optim, self.name))
        for key, value in self.options:
            if not isinstance(key, str) or key not in accepted:
                raise SystemSpecError(f"optimizer {self.name} has no option {key!r}; its options are "
                                      f"{', '.join(sorted(accepted))}")
            literal(value, f"optimizer {self.name} option {key}")

    def code(self, params: str) -> str:
        """The constructor call over the parameter expression ``params`` (a checked identifier)."""
        args = "".join(f", {k}={literal(v, k)}" for k, v in self.options)
        return f"torch.optim.{self.name}({params}{args})"


def _keywords(cls: type) -> set[str]:
    sig = inspect.signature(cls)
    return {n for n, p in sig.parameters.items() if n not in ("self", "params")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def literal(value: object, what: str) -> str:
    """The source text of a plain literal (bool, int, finite float, None, tuple of numbers); else an error.

    >>> literal((0.5, 0.999), "betas")
    '(0.5, 0.999)'
    """
    if value is None or type(value) is bool:
        return "True" if value is True else "False" if value is False else "None"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise SystemSpecError(f"{what} must be a finite number, got {value!r}")
        return float.__repr__(value)
    if type(value) is tuple and all(type(v) in (int, float) for v in value):
        items = [literal(v, what) for v in value]
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    raise SystemSpecError(f"{what} must be a literal (a number, bool, None or a tuple of numbers), got "
                          f"{type(value).__name__} {value!r}; the emitted code writes it as it is")


def optimizer_spec(spec: OptimizerLike, model: str) -> OptimizerSpec:
    """An ``OptimizerSpec`` from ``"Adam"``, ``torch.optim.Adam`` or ``("Adam", {"lr": 2e-4})``.

    >>> optimizer_spec(("SGD", {"lr": 0.1, "momentum": 0.9}), "net").code("p")
    'torch.optim.SGD(p, lr=0.1, momentum=0.9)'
    """
    if isinstance(spec, OptimizerSpec):
        return spec
    options: Mapping[str, Any] = {}
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], Mapping):
            raise SystemSpecError(f"optimizers[{model!r}] must be a name or (name, {{option: value}}), got {spec!r}")
        spec, options = spec
    if isinstance(spec, type):
        if getattr(torch.optim, spec.__name__, None) is not spec:
            raise SystemSpecError(f"optimizers[{model!r}]: {spec.__name__} is not a torch.optim optimizer class; "
                                  f"use one of {', '.join(optimizer_names())}")
        spec = spec.__name__
    if not isinstance(spec, str):
        raise SystemSpecError(f"optimizers[{model!r}] must name a torch.optim optimizer (e.g. \"Adam\"), got "
                              f"{type(spec).__name__}")
    try:
        return OptimizerSpec(spec, tuple(options.items()))
    except SystemSpecError as e:
        raise SystemSpecError(f"optimizers[{model!r}]: {e}") from e

"""The activation kinds torchgraft knows, and how each is spelled in torch."""

from __future__ import annotations

import enum
import functools
from typing import Any


class Spelling(enum.Enum):
    """How an op was written in the source: ``nn.ReLU()``, ``F.relu``, ``torch.relu``, ``x.relu()``."""

    MODULE = "module"
    FUNCTIONAL = "functional"
    TORCH = "torch"
    METHOD = "method"


class ActKind(enum.Enum):
    """One member per activation: (module class, F name, torch name, method name, options)."""

    RELU = ("ReLU", "relu", "relu", "relu", ())
    RELU6 = ("ReLU6", "relu6", None, None, ())
    LEAKY_RELU = ("LeakyReLU", "leaky_relu", None, None, (("negative_slope", 0.01),))
    GELU = ("GELU", "gelu", None, None, (("approximate", "none"),))
    SILU = ("SiLU", "silu", None, None, ())
    HARDSWISH = ("Hardswish", "hardswish", None, None, ())
    HARDSIGMOID = ("Hardsigmoid", "hardsigmoid", None, None, ())
    SIGMOID = ("Sigmoid", "sigmoid", "sigmoid", "sigmoid", ())
    TANH = ("Tanh", "tanh", "tanh", "tanh", ())
    ELU = ("ELU", "elu", None, None, (("alpha", 1.0),))
    MISH = ("Mish", "mish", None, None, ())
    SELU = ("SELU", "selu", "selu", None, ())
    SOFTPLUS = ("Softplus", "softplus", None, None, (("beta", 1.0), ("threshold", 20.0)))
    HARDTANH = ("Hardtanh", "hardtanh", None, None, (("min_val", -1.0), ("max_val", 1.0)))

    def __init__(self, module: str, functional: str, torch_fn: str | None, method: str | None,
                 options: tuple[tuple[str, Any], ...]) -> None:
        self.module = module
        self.functional = functional
        self.torch_fn = torch_fn
        self.method = method
        self.options = dict(options)

    @classmethod
    def parse(cls, name: str) -> ActKind:
        """``"relu"``, ``"ReLU"``, ``"leaky_relu"`` or ``"LEAKY_RELU"`` → the kind; a clear error otherwise."""
        return _parse(name)


@functools.lru_cache(maxsize=64)
def _parse(name: str) -> ActKind:
    key = name.strip().lower().replace("-", "_")
    for k in ActKind:
        if key in (k.name.lower(), k.module.lower(), k.functional):
            return k
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(k.functional for k in ActKind)}")


FUNCTIONAL_ACTIVATIONS = {k.functional: k for k in ActKind}
"""``torch.nn.functional`` name → kind."""


def functional_params(kind: ActKind) -> list[str]:
    """Parameter names of ``F.<kind>`` in order (input first); builtins without a signature
    (``F.gelu``) fall back to ``input`` plus the kind's options."""
    import inspect

    import torch.nn.functional as F

    try:
        return list(inspect.signature(getattr(F, kind.functional)).parameters)
    except (TypeError, ValueError):
        return ["input", *kind.options]

"""Reparametrizations of a layer's tensor: ``weight_norm``, ``spectral_norm``, ``orthogonal``.

A parametrized ``nn.Linear`` is still a Linear: its primitive carries a ``Reparam`` record per
registration, in the order they were registered. Building the primitive (and the emitted
``model.py``) calls the same ``torch.nn.utils`` function on the fresh layer, so the state keys
(``parametrizations.weight.original0``, ``weight_g``/``weight_v``, spectral norm's ``_u``/``_v``)
and the forward are the original's. The kinds this module knows are the only ones the IR holds;
a user-defined parametrization class is not a ``Reparam`` (capture refuses it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchgraft.errors import IRError

KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "weight_norm": ("nn.utils.parametrizations.weight_norm", ("dim",)),
    "spectral_norm": ("nn.utils.parametrizations.spectral_norm", ("n_power_iterations", "eps", "dim")),
    "orthogonal": ("nn.utils.parametrizations.orthogonal", ("orthogonal_map", "use_trivialization")),
    "legacy_weight_norm": ("nn.utils.weight_norm", ("dim",)),
    "legacy_spectral_norm": ("nn.utils.spectral_norm", ("n_power_iterations", "eps", "dim")),
}
"""Kind → (the function that registers it, as written in model.py; its options besides ``name``)."""


@dataclass(frozen=True, slots=True)
class Reparam:
    """One registration of a reparametrization on the tensor ``name`` of a layer.

    ``kind`` is a key of ``KINDS``; ``options`` its keyword arguments (all of them, explicit).
    """

    kind: str
    name: str = "weight"
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise IRError(f"unknown reparametrization {self.kind!r}; known: {', '.join(KINDS)}")
        if not self.name.isidentifier():
            raise IRError(f"reparametrized tensor name {self.name!r} is not an identifier")
        unknown = {k for k, _ in self.options} - set(KINDS[self.kind][1])
        if unknown:
            raise IRError(f"{self.kind} has no option {sorted(unknown)}; known: {KINDS[self.kind][1]}")

    @property
    def function(self) -> str:
        """The registering call's dotted name below ``torch`` (``nn.utils.parametrizations.weight_norm``)."""
        return KINDS[self.kind][0]

    @property
    def legacy(self) -> bool:
        """True for the hook-based ``torch.nn.utils.weight_norm``/``spectral_norm``."""
        return self.kind.startswith("legacy_")

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the registering call."""
        return {"name": self.name, **dict(self.options)}

    def apply(self, layer: nn.Module) -> nn.Module:
        """Register this reparametrization on ``layer`` (as model.py does); returns the layer."""
        if self.kind == "orthogonal" and getattr(layer, self.name).device.type == "meta":
            return _orthogonal_on_meta(layer, self.name, **dict(self.options))
        fn: Callable[..., nn.Module] = _resolve(self.function)
        return fn(layer, **self.kwargs())

    def label(self) -> str:
        """Short text for the printer: ``weight_norm(weight, dim=0)``."""
        opts = "".join(f", {k}={v!r}" for k, v in self.options)
        return f"{self.kind}({self.name}{opts})"


def _resolve(dotted: str) -> Callable[..., nn.Module]:
    obj: Any = torch
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _orthogonal_on_meta(layer: nn.Module, name: str, orthogonal_map: str = "matrix_exp",
                        use_trivialization: bool = True) -> nn.Module:
    """``orthogonal`` with the state it has on a real device, on the meta device, where its
    ``right_inverse`` cannot run (it reads values): registered with the identity as the inverse,
    and the ``base`` buffer a real registration fills given its shape."""
    from torch.nn.utils import parametrizations, parametrize

    def identity(q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # register_parametrization then takes the tensor as it is

    weight = getattr(layer, name)
    orth = parametrizations._Orthogonal(weight, parametrizations._OrthMaps[orthogonal_map],
                                        use_trivialization=use_trivialization)
    object.__setattr__(orth, "right_inverse", identity)
    parametrize.register_parametrization(layer, name, orth, unsafe=True)
    object.__delattr__(orth, "right_inverse")
    if use_trivialization:
        n = max(weight.shape[-2:])
        orth._buffers["base"] = torch.empty(*weight.shape[:-2], n, n, device="meta")
    return layer

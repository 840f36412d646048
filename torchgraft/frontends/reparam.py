"""Capture layers with a reparametrized weight: ``torch.nn.utils.parametrizations.weight_norm``,
``spectral_norm`` and ``orthogonal``, and the legacy hook-based ``torch.nn.utils.weight_norm`` /
``spectral_norm``.

Such a layer stays its primitive (a parametrized ``nn.Linear`` is a ``Linear``, so passes still
see it) with one ``ir.reparam.Reparam`` per registration; ``model.py`` calls the same function on
the fresh layer, so the state keys and the computation are the original's. The primitive is
recovered from a plain stand-in of the layer (its class without the parametrization, the
original's attributes, placeholders for the reparametrized tensors) and checked by building it,
reparametrizations included, on the meta device and comparing every state key and shape with the
original's. Anything else is refused with a ``CaptureError``: a user-defined parametrization
class, a parametrized module that is not a ``torch.nn`` layer, a layer whose rebuild differs.
Nothing here runs a parametrization or changes the module.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from torchgraft.errors import CaptureError
from torchgraft.frontends.leaf import to_primitive, torch_layer_name
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.reparam import Reparam

FIX = ("remove it before capture with torch.nn.utils.parametrize.remove_parametrizations(module, name) "
       "(the weight keeps its current value, under its plain key), or register one of weight_norm, "
       "spectral_norm, orthogonal from torch.nn.utils.parametrizations on a torch.nn layer instead")
"""What a refusal tells the user to do."""


def _legacy(fn: Any) -> Reparam | None:
    """The Reparam a legacy forward pre-hook stands for (None for any other hook)."""
    if type(fn) is WeightNorm:
        return Reparam("legacy_weight_norm", fn.name, (("dim", fn.dim),))
    if type(fn) is SpectralNorm:
        return Reparam("legacy_spectral_norm", fn.name,
                       (("n_power_iterations", fn.n_power_iterations), ("eps", fn.eps), ("dim", fn.dim)))
    return None


def kept_hook(mod: nn.Module, fn: Any) -> bool:
    """Whether capture reproduces the forward pre-hook ``fn`` of ``mod``: a legacy weight/spectral norm
    on a torch.nn layer (model.py registers it again)."""
    return _legacy(fn) is not None and torch_layer_name(mod) is not None


def is_reparametrized(mod: nn.Module) -> bool:
    """Whether ``mod`` has a parametrization or a legacy weight/spectral norm hook."""
    if not mod._forward_pre_hooks and not _may_hold_parametrizations(mod):
        return False  # the common case, told without the failing attribute lookup is_parametrized makes
    return parametrize.is_parametrized(mod) or any(_legacy(fn) for fn in mod._forward_pre_hooks.values())


def _may_hold_parametrizations(mod: nn.Module) -> bool:
    """False only when ``getattr(mod, "parametrizations", None)`` is surely no ModuleDict: no child, instance or
    class attribute of that name and ``nn.Module``'s own ``__getattr__`` (parameters and buffers are tensors)."""
    return ("parametrizations" in mod._modules or "parametrizations" in mod.__dict__
            or hasattr(type(mod), "parametrizations") or type(mod).__getattr__ is not nn.Module.__getattr__)


def _where(path: str, mod: nn.Module) -> str:
    return f"{path or '<root>'} ({type(mod).__name__})"


def _registered(m: nn.Module, name: str) -> Reparam | None:
    """The Reparam of one parametrization module of torch's own (None for a user-defined one)."""
    P = nn.utils.parametrizations
    if type(m) is P._WeightNorm:
        return Reparam("weight_norm", name, (("dim", m.dim),))
    if type(m) is P._SpectralNorm:
        return Reparam("spectral_norm", name,
                       (("n_power_iterations", m.n_power_iterations), ("eps", m.eps), ("dim", m.dim)))
    if type(m) is P._Orthogonal:
        return Reparam("orthogonal", name, (("orthogonal_map", m.orthogonal_map.name),
                                            ("use_trivialization", "base" in m._buffers)))
    return None


def reparams_of(mod: nn.Module, path: str) -> tuple[Reparam, ...]:
    """Every reparametrization of ``mod`` in registration order; CaptureError for one torchgraft cannot rebuild."""
    legacy = [r for r in map(_legacy, mod._forward_pre_hooks.values()) if r is not None]
    found: list[Reparam] = []
    if parametrize.is_parametrized(mod):
        if legacy:
            raise CaptureError(f"{_where(path, mod)} has both a parametrization and a legacy "
                               f"{legacy[0].kind.removeprefix('legacy_')} hook, whose order torchgraft cannot "
                               f"recover. Use only one of them; for the parametrization: {FIX}.", path)
        plists: nn.ModuleDict = mod.parametrizations  # type: ignore[assignment]
        for name, plist in plists.items():
            for m in plist:  # type: ignore[attr-defined]
                r = _registered(m, name)
                if r is None:
                    raise CaptureError(f"{_where(path, mod)}: its {name!r} is parametrized by "
                                       f"{type(m).__module__}.{type(m).__qualname__}, a parametrization "
                                       f"torchgraft does not rebuild (only torch's weight_norm, spectral_norm "
                                       f"and orthogonal). Fix: {FIX}.", path)
                found.append(r)
    return tuple(legacy + found)


def _shape_of(mod: nn.Module, name: str) -> tuple[int, ...]:
    """The shape of the reparametrized tensor, read off what it is stored as (nothing computed)."""
    if name in mod.__dict__ and isinstance(mod.__dict__[name], torch.Tensor):  # legacy: set by the hook
        return tuple(mod.__dict__[name].shape)
    plist: nn.Module = mod.parametrizations[name]  # type: ignore[index,assignment]
    stored = plist._parameters  # weight_norm first: original0 is the norm g, original1 the direction v
    original = stored.get("original", stored.get("original1"))
    if original is None:
        raise CaptureError(f"{name}: its parametrization holds no 'original' tensor; {FIX}", "")
    return tuple(original.shape)


def _plain_view(mod: nn.Module, reparams: tuple[Reparam, ...]) -> nn.Module:
    """A stand-in for ``mod`` without its reparametrizations: its class below the parametrized one, its
    attributes, and meta placeholders for the reparametrized tensors (``mod`` is left as it is)."""
    cls = type(mod).__bases__[0] if parametrize.is_parametrized(mod) else type(mod)
    view: nn.Module = object.__new__(cls)
    names = {r.name for r in reparams}
    legacy = {r.name + s for r in reparams if r.legacy for s in ("_g", "_v", "_orig", "_u")}
    view.__dict__.update({k: v for k, v in mod.__dict__.items() if k not in names})
    params = {k: p for k, p in mod._parameters.items() if k not in legacy}
    params.update({n: nn.Parameter(torch.empty(_shape_of(mod, n), device="meta")) for n in names})
    view.__dict__.update(_parameters=params, _buffers={k: b for k, b in mod._buffers.items() if k not in legacy},
                         _modules={k: m for k, m in mod._modules.items() if k != "parametrizations"},
                         _forward_pre_hooks=OrderedDict(), _state_dict_hooks=OrderedDict(),
                         _state_dict_pre_hooks=OrderedDict(), _load_state_dict_pre_hooks=OrderedDict())
    return view


def _state_signature(mod: nn.Module) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {k: (tuple(v.shape), isinstance(v, nn.Parameter)) for k, v in mod.state_dict(keep_vars=True).items()}


def reparametrized_primitive(mod: nn.Module, path: str) -> Primitive:
    """The primitive for a reparametrized torch.nn layer, its Reparams recorded; CaptureError otherwise."""
    reparams = reparams_of(mod, path)
    view = _plain_view(mod, reparams)
    prim, why = to_primitive(view)
    if prim is None:
        raise CaptureError(f"{_where(path, mod)} is reparametrized ({', '.join(r.label() for r in reparams)}), "
                           f"which torchgraft keeps only on torch.nn layers it can rebuild ({why}). Fix: {FIX}.",
                           path)
    prim = replace(prim, reparam=reparams)
    try:
        with torch.device("meta"):
            rebuilt = _state_signature(prim.build())
    except Exception as e:  # noqa: BLE001 - any failure means it cannot be rebuilt
        raise CaptureError(f"{_where(path, mod)}: rebuilding {prim.label()} failed ({type(e).__name__}: {e}). "
                           f"Fix: {FIX}.", path) from e
    original = _state_signature(mod)
    if rebuilt != original:
        diff = sorted(set(rebuilt.items()) ^ set(original.items()))[:6]
        raise CaptureError(f"{_where(path, mod)}: {prim.label()} rebuilt has other state than the original "
                           f"(differing keys: {diff}). Fix: {FIX}.", path)
    return prim

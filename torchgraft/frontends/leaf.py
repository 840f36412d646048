"""torch.nn leaf modules → primitives, by recovering constructor arguments.

The arguments come from the instance's attributes, matched against the torch
constructor's signature; the result is checked by rebuilding the layer on the meta
device and comparing its state (names, shapes) and ``extra_repr``. A layer that does
not survive the check is not a primitive (the caller keeps it opaque).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from torchgraft.ir.activations import ActKind
from torchgraft.ir.primitives import Activation, Primitive, TorchLayer, primitive_class_for

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
_ACT_BY_MODULE = {k.module: k for k in ActKind}


_BEHAVIOUR_FREE = {"__init__", "reset_parameters", "extra_repr", "__repr__", "__setstate__"}


def _adds_behaviour(cls: type) -> bool:
    """Whether a subclass defines a method the forward may reach (``_conv_forward``, a property)."""
    return any(name not in _BEHAVIOUR_FREE and (inspect.isfunction(v) or isinstance(v, (property, classmethod,
               staticmethod))) for name, v in vars(cls).items())


def torch_layer_name(mod: nn.Module) -> str | None:
    """The ``torch.nn`` class a module is (or behaves as), or None for user classes.

    A subclass counts when it adds no method besides ``__init__`` (and initialisation or
    printing helpers): one that overrides ``forward`` or ``_conv_forward`` is a Block.
    """
    for cls in type(mod).__mro__:
        if cls.__module__.startswith("torch.nn.modules") and cls is not nn.Module:
            if isinstance(mod, CONTAINERS):
                return None
            if type(mod).forward is not getattr(cls, "forward", None) or getattr(nn, cls.__name__, None) is not cls:
                return None
            return cls.__name__
        if _adds_behaviour(cls):
            return None
    return None


@functools.cache
def _ctor_params(op: str) -> tuple[inspect.Parameter, ...]:
    """The constructor parameters of ``nn.<op>`` a module's attributes can give back."""
    sig = inspect.signature(getattr(nn, op).__init__)
    return tuple(p for name, p in sig.parameters.items()
                 if name not in ("self", "device", "dtype") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _recover_kwargs(mod: nn.Module, op: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for p in _ctor_params(op):
        name = p.name
        if name in ("bias", "add_bias_kv") and hasattr(mod, name if name == "bias" else "bias_k"):
            attr = getattr(mod, "bias" if name == "bias" else "bias_k")
            if attr is None or isinstance(attr, torch.Tensor):
                kw[name] = attr is not None
                continue
        if name == "affine" and hasattr(mod, "affine"):
            kw[name] = bool(mod.affine)
            continue
        if hasattr(mod, name):
            val = getattr(mod, name)
            if isinstance(val, list):
                val = tuple(val)
            kw[name] = val
        elif name == "bias" and isinstance(mod, nn.MultiheadAttention):
            kw[name] = mod.in_proj_bias is not None
        elif p.default is inspect.Parameter.empty:
            raise ValueError(f"cannot recover required argument {name!r} of nn.{op}")
    return kw


def state_shapes(mod: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``mod.state_dict()``, without building it (no hooks, no detaching)."""
    out = {prefix + k: tuple(v.shape) for k, v in mod._parameters.items() if v is not None}
    out.update((prefix + k, tuple(v.shape)) for k, v in mod._buffers.items()
               if v is not None and k not in mod._non_persistent_buffers_set)
    for name, child in mod._modules.items():
        if child is not None:
            out.update(state_shapes(child, f"{prefix}{name}."))
    return out


def _matches(mod: nn.Module, prim: Primitive) -> bool:
    if type(mod)._save_to_state_dict is nn.Module._save_to_state_dict and not mod._state_dict_hooks:
        a = state_shapes(mod)
    else:  # a layer with its own state format (lazy layers) or hooks: ask it
        a = {k: tuple(v.shape) for k, v in mod.state_dict(keep_vars=True).items()}
    try:
        rebuilt = _rebuilt(prim)
    except TypeError:  # an unhashable constructor argument: build it uncached
        rebuilt = _signature(prim)
    return rebuilt == (a, mod.extra_repr())


@functools.lru_cache(maxsize=4096)
def _rebuilt(prim: Primitive) -> tuple[dict[str, tuple[int, ...]], str]:
    return _signature(prim)


def _signature(prim: Primitive) -> tuple[dict[str, tuple[int, ...]], str]:
    """State shapes and ``extra_repr`` of the layer ``prim`` builds (on the meta device)."""
    with torch.device("meta"):
        rebuilt = prim.build()
    return state_shapes(rebuilt), rebuilt.extra_repr()


def to_primitive(mod: nn.Module) -> tuple[Primitive | None, str]:
    """The primitive for a torch.nn leaf module, or (None, reason) when it cannot be rebuilt."""
    op = torch_layer_name(mod)
    if op is None:
        return None, f"{type(mod).__qualname__} is not a torch.nn layer"
    try:
        kw = _recover_kwargs(mod, op)
        family = primitive_class_for(op)
        prim: Primitive
        if family is Activation:
            kind = _ACT_BY_MODULE[op]
            inplace = bool(kw.pop("inplace", False))
            opts = {k: v for k, v in kw.items() if k in kind.options}
            prim = Activation.of(kind, inplace=inplace, **opts)
        elif family is TorchLayer:
            prim = TorchLayer(op, tuple(kw.items()))
        else:
            fields = set(family.__dataclass_fields__)
            prim = family(op=op, **{k: v for k, v in kw.items() if k in fields})
    except Exception as e:  # noqa: BLE001 - any failure means "not rebuildable"
        return None, f"could not recover constructor arguments of nn.{op}: {e}"
    if not _matches(mod, prim):
        return None, f"nn.{op} rebuilt from its attributes differs from the original ({mod.extra_repr()})"
    return prim, ""


def recover_ctor(mod: nn.Module) -> dict[str, Any] | None:
    """Constructor keyword arguments that rebuild a user module from its attributes, if any do.

    Only plain constants are used (numbers, strings, bools, None, tuples of them); the
    result is checked by building the class on the meta device and comparing state.
    """
    cls = type(mod)
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    kw: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = getattr(mod, name, inspect.Parameter.empty)
        if _is_constant(value):
            kw[name] = tuple(value) if isinstance(value, list) else value
        elif p.default is inspect.Parameter.empty:
            return None
    try:
        with torch.device("meta"):
            rebuilt = cls(**kw)
    except Exception:  # noqa: BLE001 - any failure means "cannot rebuild"
        return None
    a = {k: tuple(v.shape) for k, v in mod.state_dict(keep_vars=True).items()}
    b = {k: tuple(v.shape) for k, v in rebuilt.state_dict(keep_vars=True).items()}
    return kw if a == b else None


def _is_constant(v: Any) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_is_constant(x) for x in v)
    return isinstance(v, (bool, int, float, str, type(None)))

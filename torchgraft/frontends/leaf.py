"""torch.nn leaf modules → primitives, by recovering constructor arguments.

The arguments come from the instance's attributes, matched against the torch
constructor's signature; the result is checked by rebuilding the layer on the meta
device and comparing its state (names, shapes) and ``extra_repr``. A layer that does
not survive the check is not a primitive (the caller keeps it opaque).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchgraft.frontends import torch_transformer
from torchgraft.ir.activations import ActKind
from torchgraft.ir.primitives import Activation, Primitive, TorchLayer, ctor_signature, primitive_class_for

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
_ACT_BY_MODULE = {k.module: k for k in ActKind}


_BEHAVIOUR_FREE = {"__init__", "reset_parameters", "extra_repr", "__repr__", "__setstate__"}


def _adds_behaviour(cls: type, base: type | None) -> bool:
    """Whether a subclass defines a method the forward may reach (``_conv_forward``, a property).

    A new staticmethod does not count: it sees no instance, and ``base`` (the torch.nn class whose
    forward runs) never calls a name it does not define (torchvision's
    ``Conv3DSimple.get_downsample_stride``, used only while building the model).
    """
    for name, v in vars(cls).items():
        if name in _BEHAVIOUR_FREE or (isinstance(v, staticmethod) and base is not None and not hasattr(base, name)):
            continue
        if inspect.isfunction(v) or isinstance(v, (property, classmethod, staticmethod)):
            return True
    return False


def _torch_base(cls: type) -> type | None:
    return next((c for c in cls.__mro__ if c.__module__.startswith("torch.nn.modules") and c is not nn.Module), None)


def torch_layer_name(mod: nn.Module) -> str | None:
    """The ``torch.nn`` class a module is (or behaves as), or None for user classes.

    A subclass counts when it adds no method besides ``__init__`` (and initialisation or
    printing helpers, and new staticmethods): one that overrides ``forward`` or ``_conv_forward``
    is a Block. Such a subclass is captured, and emitted, as the torch.nn layer with the
    arguments its ``__init__`` passed (see ``to_primitive``). Inside ``layer_names_kept()`` the answer
    is worked out once per class.
    """
    if isinstance(mod, CONTAINERS):
        return None
    kept = _KEPT.get()
    if kept is None:
        return _layer_name(type(mod))
    cls = type(mod)
    if cls not in kept:
        kept[cls] = _layer_name(cls)
    return kept[cls]


def _layer_name(owner: type) -> str | None:
    """``torch_layer_name`` of an instance of ``owner`` (what it says depends on the class alone)."""
    base = _torch_base(owner)
    for cls in owner.__mro__:
        if cls is base and base is not None:
            if getattr(owner, "forward", None) is not getattr(cls, "forward", None) \
                    or getattr(nn, cls.__name__, None) is not cls:
                return None
            return cls.__name__
        if _adds_behaviour(cls, base):
            return None
    return None


_KEPT: contextvars.ContextVar[dict[type, str | None] | None] = contextvars.ContextVar("torchgraft_layer_names",
                                                                                      default=None)


@contextlib.contextmanager
def layer_names_kept() -> Iterator[None]:
    """Within: ``torch_layer_name`` works out each class's answer once (one capture: its classes do not change
    meanwhile), not once per module and call."""
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


@functools.cache
def _ctor_params(op: str) -> tuple[inspect.Parameter, ...]:
    """The constructor parameters of ``nn.<op>`` a module's attributes can give back."""
    sig = ctor_signature(op)
    return tuple(p for name, p in sig.parameters.items()
                 if name not in ("self", "device", "dtype") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _nested(child: nn.Module) -> Primitive:
    prim, why = to_primitive(child)
    if prim is None:
        raise ValueError(why)
    return prim


def _recover_kwargs(mod: nn.Module, op: str) -> dict[str, Any]:
    if op in torch_transformer.RECOVER:
        return torch_transformer.RECOVER[op](mod, _nested)
    kw: dict[str, Any] = {}
    for name, required in _ctor_fields(op):
        if name in ("bias", "add_bias_kv"):
            attr = getattr(mod, "bias" if name == "bias" else "bias_k", _ABSENT)
            if attr is None or isinstance(attr, torch.Tensor):
                kw[name] = attr is not None
                continue
        val = getattr(mod, name, _ABSENT)  # one lookup (hasattr, then getattr, would fail twice in __getattr__)
        if name == "affine" and val is not _ABSENT:
            kw[name] = bool(val)
        elif val is not _ABSENT:
            kw[name] = tuple(val) if isinstance(val, list) else val
        elif name == "bias" and isinstance(mod, nn.MultiheadAttention):
            kw[name] = mod.in_proj_bias is not None
        elif required:
            raise ValueError(f"cannot recover required argument {name!r} of nn.{op}")
    return kw


_ABSENT: Any = object()


@functools.cache
def _ctor_fields(op: str) -> tuple[tuple[str, bool], ...]:
    """(name, required) of each of ``_ctor_params(op)``."""
    return tuple((p.name, p.default is inspect.Parameter.empty) for p in _ctor_params(op))


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
    """The primitive for a torch.nn leaf module, or (None, reason) when it cannot be rebuilt.

    A subclass that only changes ``__init__`` (torchvision's ``Conv3DSimple(nn.Conv3d)``) becomes the
    primitive of its torch.nn class, with a note naming the subclass in place of the reason. It is
    emitted as that torch.nn layer with the recovered arguments, not through the subclass's import
    path: its forward *is* the layer's forward and ``_matches`` proved its state and ``extra_repr``
    identical, so outputs and strict state keys are the same, model.py keeps needing only torch,
    and passes may change the layer (``fuse-conv-bn`` adds a bias ``Conv3DSimple.__init__`` cannot
    express). What is lost is only ``isinstance(m, Conv3DSimple)`` on the emitted model.
    """
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
            fields = family.__dataclass_fields__
            prim = family(op=op, **{k: v for k, v in kw.items() if k in fields})
    except Exception as e:  # noqa: BLE001 - any failure means "not rebuildable"
        return None, f"could not recover constructor arguments of nn.{op}: {e}"
    if not _matches(mod, prim) or (op in torch_transformer.RECOVER and not _same_tree(mod, prim)):
        return None, f"nn.{op} rebuilt from its attributes differs from the original ({mod.extra_repr()})"
    if type(mod) is not getattr(nn, op):
        cls = type(mod)
        return prim, (f"{cls.__module__}.{cls.__qualname__} only changes __init__: captured and emitted as "
                      f"nn.{op} with the same arguments")
    return prim, ""


def _same_tree(mod: nn.Module, prim: Primitive) -> bool:
    with torch.device("meta"):
        return torch_transformer.same_layer(mod, prim.build())


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

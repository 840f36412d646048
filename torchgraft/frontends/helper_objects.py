"""Attribute values a copied forward reads that are objects, not constants (``ir.attr_values``).

``self.box_coder = BoxCoder(weights, bbox_xform_clip)`` in torchvision's ``__init__`` holds
an instance of a plain helper class. Its class is copied (``helper_classes``) and its
constructor arguments recovered from the instance's attributes, as ``leaf.recover_ctor``
does for modules: each ``__init__`` parameter read from the attribute of the same name. The
result is checked by building the class again from those arguments and comparing every
attribute of the two instances. An object that does not survive the check (torchvision's
``SSDMatcher(threshold)`` keeps ``high_threshold``/``low_threshold``, not ``threshold``) is
restored from its attributes instead: ``restored(SSDMatcher, dict(high_threshold=0.5, ...))``
makes the instance without running ``__init__`` and sets exactly the original's attributes.

Also: a helper function held as an attribute (``self.box_similarity = box_ops.box_iou``) is
copied and referenced by name, and small tensors (and lists of them, AnchorGenerator's
``cell_anchors``) are written out element by element.
"""

from __future__ import annotations

import inspect
import keyword
import types
from typing import Any

import torch
from torch import nn

from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.helpers import HelperError, collect, unpatched
from torchgraft.ir.attr_values import (
    MAX_TENSOR_LITERAL,
    AttrDict,
    AttrList,
    AttrValue,
    HelperName,
    HelperObject,
    TensorLiteral,
)
from torchgraft.ir.model import Helper
from torchgraft.ir.values import const_arg


def attr_value(value: Any, helpers: dict[str, Helper], where: str) -> AttrValue:
    """The IR value that rebuilds ``value`` in the emitted ``__init__`` (TraceError naming ``where`` if none).

    Helpers it needs are added to ``helpers`` only when the whole value can be rebuilt.
    """
    staged = dict(helpers)
    try:
        out = _value(value, staged, where)
    except HelperError as e:
        raise TraceError(f"{where}: {e}") from None
    helpers.update(staged)
    return out


def _value(value: Any, helpers: dict[str, Helper], where: str) -> AttrValue:
    try:
        return const_arg(value)
    except Exception:  # noqa: BLE001 - not a plain constant: try the other kinds
        pass
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return AttrList(tuple(_value(v, helpers, where) for v in value), isinstance(value, list))
    if type(value) is dict and all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)
                                   for k in value):
        return AttrDict(tuple((k, _value(v, helpers, f"{where}[{k!r}]")) for k, v in value.items()))
    if isinstance(value, torch.Tensor):
        return _tensor(value, where)
    value = unpatched(value)
    if isinstance(value, types.FunctionType):
        return HelperName(collect(value, helpers))
    if type(type(value)) is type and hasattr(value, "__dict__") and not isinstance(value, (type, nn.Module)) \
            and type(value).__module__ != "builtins":
        return _object(value, helpers, where)  # its class is copied, or refused (HelperError: why)
    raise TraceError(f"{where} is a {type(value).__name__} that is not a constant, helper object or small tensor")


def _tensor(t: torch.Tensor, where: str) -> TensorLiteral:
    if type(t) is not torch.Tensor or t.requires_grad or t.is_quantized or t.is_sparse or t.is_complex() \
            or t.device.type != "cpu" or t.numel() > MAX_TENSOR_LITERAL:
        raise TraceError(f"{where} is a tensor ({tuple(t.shape)}, {t.dtype}, {t.device}) that cannot be written "
                         f"out (at most {MAX_TENSOR_LITERAL} elements of a plain CPU tensor); make it a buffer")
    dtype = str(t.dtype).removeprefix("torch.")
    return TensorLiteral(tuple(t.detach().reshape(-1).tolist()), tuple(t.shape), dtype)


def _object(obj: Any, helpers: dict[str, Helper], where: str) -> HelperObject:
    """``Cls(**recovered)`` when the constructor rebuilds it; else ``restored(Cls, state)``."""
    cls = type(obj)
    name = collect(cls, helpers)
    try:
        kwargs = _ctor_kwargs(obj, where)
        _check_rebuilt(obj, kwargs, where)
    except TraceError as e:
        if "__slots__" in vars(cls) or type(obj).__new__ is not object.__new__:
            raise
        state = _value(dict(vars(obj)), helpers, where)  # every attribute, as the instance holds it
        if not isinstance(state, AttrDict):
            raise e from None
        return HelperObject(collect(restored, helpers), (("cls", HelperName(name)), ("state", state)))
    return HelperObject(name, tuple((k, _value(v, helpers, f"{where}.{k}")) for k, v in kwargs.items()))


def restored(cls: Any, state: dict[str, Any]) -> Any:
    """An instance of ``cls`` holding ``state`` as its attributes, its ``__init__`` not run (copied into
    model.py for helper objects whose constructor arguments the instance does not keep)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _ctor_kwargs(obj: Any, where: str) -> dict[str, Any]:
    cls = type(obj)
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError) as e:
        raise TraceError(f"{where}: the constructor of {cls.__qualname__} has no signature: {e}") from None
    kwargs: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname == "self":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TraceError(f"{where}: {cls.__qualname__}.__init__ takes *args/**kwargs; its arguments cannot "
                             "be recovered")
        if pname in vars(obj):
            kwargs[pname] = vars(obj)[pname]
        elif p.default is inspect.Parameter.empty:
            raise TraceError(f"{where}: {cls.__qualname__}.__init__ needs {pname!r}, which the object does not keep")
    return kwargs


def _check_rebuilt(obj: Any, kwargs: dict[str, Any], where: str) -> None:
    cls = type(obj)
    try:
        rebuilt = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot rebuild"
        raise TraceError(f"{where}: {cls.__qualname__} cannot be rebuilt from its attributes: {e}") from None
    if not _same(vars(rebuilt), vars(obj)):
        raise TraceError(f"{where}: {cls.__qualname__} rebuilt from its attributes differs from the original")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if hasattr(a, "__dict__") and not isinstance(a, (type, types.FunctionType)):
        return _same(vars(a), vars(b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are not the same
        return False


__all__ = ["attr_value", "restored"]

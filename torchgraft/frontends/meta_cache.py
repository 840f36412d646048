"""Reuse of meta-kernel results within one meta replay (exact: keyed on everything the result depends on).

A meta replay runs PyTorch's meta kernels where no shape rule applies, and many of them are
Python decompositions (``layer_norm`` on a non-contiguous input about 1 ms a call). A model
repeats the same call at the same sizes in every one of its identical blocks (ViT's 24
LayerNorms, Swin's 12 window attentions), so ``MetaCache`` remembers each call's result
*metadata* and hands out a fresh meta tensor with the same shape, strides, dtype and device.

A result is reused only when it cannot differ: the call is pure on meta tensors (a plain
torch.nn layer without hooks or children, a torch function, a tensor method that is not
in-place, or a helper function), its arguments are meta tensors (keyed on shape, strides,
offset, dtype, ``requires_grad``) and immutable constants (numbers, strings, dtypes, devices,
None, tuples of these, and lists of these when the call leaves them as they were; anything
else is not cached), and the result is one or more tensors that share storage with no
argument and no other result (rebuilt with the same shape, strides, storage offset and
dtype). Everything else runs every time. The cache lives as long as one replay (one
``MetaReplay``), never across captures.

>>> cache = MetaCache()
>>> x = torch.empty(2, 3, device="meta")
>>> cache.call(("torch.softmax",), [x, 1], {}, lambda: torch.softmax(x, 1)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

_CONSTANTS = (int, float, bool, str, complex, torch.dtype, torch.device, torch.layout, torch.memory_format)
_MISS = object()


def _key_of(value: Any) -> Hashable:
    """A hashable key that determines what a meta kernel sees of ``value``; raises TypeError for
    anything that is not a plain meta tensor or an immutable constant (that call is not cached)."""
    if value is None or type(value) in _CONSTANTS:
        return (type(value), value)
    if type(value) in (tuple, list, torch.Size):  # a list: the call is checked not to change it
        return (type(value), *(_key_of(v) for v in value))
    if type(value) is torch.Tensor and value.device.type == "meta" and value.layout is torch.strided:
        if value.is_conj() or value.is_neg():
            raise TypeError("a conjugate or negative view")
        return ("t", tuple(value.shape), value.stride(), value.storage_offset(), value.dtype, value.requires_grad)
    raise TypeError(type(value).__name__)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # type: ignore[no-any-return]  # the storage itself, not its wrapper


def _fresh(value: Any, inputs: set[int]) -> bool:
    """Whether ``value`` is a meta tensor sharing storage with no argument (its own or a view of a new one)."""
    return (type(value) is torch.Tensor and value.device.type == "meta" and value.layout is torch.strided
            and _storage(value) not in inputs and not value.requires_grad and not value.is_conj()
            and not value.is_neg())


def _record(out: Any, inputs: set[int]) -> Any:
    """What to keep of a call's result: tensor metadata, None, or a tuple of these; ``_MISS`` otherwise."""
    if out is None:
        return None
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape), out.stride(), out.storage_offset(), out.dtype) if _fresh(out, inputs) else _MISS
    if type(out) is tuple:
        parts = [_record(o, inputs) for o in out]
        storages = [_storage(o) for o in out if isinstance(o, torch.Tensor)]
        if any(p is _MISS for p in parts) or len(set(storages)) != len(storages):
            return _MISS
        return ("tuple", tuple(parts))
    return _MISS


def _rebuild(rec: Any) -> Any:
    if rec is None:
        return None
    if rec[0] == "tuple":
        return tuple(_rebuild(r) for r in rec[1])
    shape, stride, offset, dtype = rec
    if offset == 0:
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    span = 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n > 0) if all(shape) else 0
    return torch.empty(offset + span, dtype=dtype, device="meta").as_strided(shape, stride, offset)


def _storages(args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> set[int]:
    ids = set()
    for v in (*args, *kwargs.values()):
        for t in (v if type(v) in (tuple, list) else (v,)):
            if isinstance(t, torch.Tensor):
                ids.add(_storage(t))
    return ids


class MetaCache:
    """Results of pure meta calls, by what determines them (see the module docstring)."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, Any] = {}

    def call(self, what: Hashable, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any],
             run: Callable[[], Any]) -> Any:
        """``run()``, or a fresh equivalent of its earlier result for the same ``what`` (the callee and
        whatever else it depends on: a layer's config, mode and state) and the same arguments."""
        try:
            key = (what, _args_key(args, kwargs), torch.is_grad_enabled(), torch.get_default_dtype())  # both
            # change what a call returns (requires_grad, the dtype of a factory's result)
            hash(key)
        except TypeError:
            return run()
        rec = self._seen.get(key, _MISS)
        if rec is not _MISS:
            return _rebuild(rec)
        out = run()
        rec = _record(out, _storages(args, kwargs))
        if rec is not _MISS and _args_key(args, kwargs) == key[1]:  # the call changed none of its arguments
            self._seen[key] = rec
        return out


def _args_key(args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return tuple(_key_of(a) for a in args), tuple(sorted((k, _key_of(v)) for k, v in kwargs.items()))


_MODULE_OWN = frozenset(vars(nn.Module()))  # parameters, buffers, children, hooks: keyed apart or checked empty


def layer_key(mod: nn.Module, state: list[torch.Tensor]) -> Hashable:
    """What a torch.nn layer's forward sees of itself: its class, mode, every plain attribute, and the
    metadata of its parameters and buffers (``state``). Raises TypeError when an attribute is not a
    constant (that layer's calls are not cached)."""
    attrs = tuple(sorted((k, _key_of(v)) for k, v in vars(mod).items() if k not in _MODULE_OWN))
    tensors = tuple((tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.requires_grad, t.device.type)
                    for t in state)
    return (type(mod), mod.training, attrs, tensors)


__all__ = ["MetaCache", "layer_key"]

"""Shape rules for the torch calls inside a function the meta replay runs (capture speed).

A copied helper function (swin's ``shifted_window_attention``) runs as Python on meta tensors
during the meta replay, and each torch op in it then runs PyTorch's meta kernel: ``F.linear`` on a
3-d input goes through Python decompositions (about 1 ms a call), ``torch.roll`` too. Within
``fast_meta()`` a ``TorchFunctionMode`` answers the calls it has an exact rule for from the
arguments' shapes (``ir.shapes``: the same rules the replay uses for graph ops), and runs every
other call as it is. A rule answers only for plain contiguous meta tensors of one floating dtype
where the kernel's result is a new contiguous tensor (checked against the kernels in the tests),
and with grad mode off (a result would otherwise require grad); otherwise the kernel runs.

>>> x, w = torch.empty(2, 3, 4, device="meta"), torch.empty(5, 4, device="meta")
>>> with torch.no_grad(), fast_meta():
...     torch.nn.functional.linear(x, w).shape
torch.Size([2, 3, 5])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from torchgraft.ir.shapes import binary_output, empty


def _plain(t: Any) -> bool:
    """A plain, contiguous, non-empty floating-point meta tensor."""
    return (type(t) is torch.Tensor and t.device.type == "meta" and t.is_floating_point() and t.is_contiguous()
            and t.numel() > 0)


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    names = ("input", "weight", "bias")
    if len(args) > 3 or any(k not in names or k in names[:len(args)] for k in kwargs):
        return None
    call = {**dict(zip(names, args)), **kwargs}
    x, w, b = call.get("input"), call.get("weight"), call.get("bias")
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        return None
    if not (_plain(x) and _plain(w)) or w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1] or x.dtype != w.dtype:
        return None
    if b is not None and not (_plain(b) and b.shape == (w.shape[0],) and b.dtype == x.dtype):
        return None
    return empty((*x.shape[:-1], w.shape[0]), x.dtype)


def _ints(v: Any) -> tuple[int, ...] | None:
    if type(v) is int:
        return (v,)
    if type(v) in (tuple, list) and v and all(type(n) is int for n in v):
        return tuple(v)
    return None


def _roll(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    names = ("input", "shifts", "dims")
    if len(args) > 3 or any(k not in names or k in names[:len(args)] for k in kwargs):
        return None
    call = {**dict(zip(names, args)), **kwargs}
    x, shifts, dims = call.get("input"), _ints(call.get("shifts")), _ints(call.get("dims"))
    if not isinstance(x, torch.Tensor) or not _plain(x) or shifts is None or dims is None or len(shifts) != len(dims):
        return None
    if len(set(d % x.dim() for d in dims if -x.dim() <= d < x.dim())) != len(dims):
        return None  # a dim out of range or given twice: the kernel says what it does
    return empty(x.shape, x.dtype)


def _binary(name: str, swap: bool = False) -> Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor | None]:
    def rule(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(args) != 2 or kwargs or not all(_plain(t) for t in tensors) or any(type(a) is bool for a in args):
            return None
        return binary_output(name, list(args[::-1] if swap else args), {})
    return rule


_RULES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor | None]] = {
    F.linear: _linear, torch.roll: _roll, torch.Tensor.roll: _roll,
    torch.Tensor.__add__: _binary("add"), torch.Tensor.__radd__: _binary("add", True),
    torch.Tensor.__mul__: _binary("mul"), torch.Tensor.__rmul__: _binary("mul", True),
    torch.Tensor.__sub__: _binary("sub"), torch.Tensor.sub: _binary("sub"), torch.Tensor.add: _binary("add"),
    torch.Tensor.mul: _binary("mul"),
    torch.add: _binary("add"), torch.mul: _binary("mul"),
}


class _FastMeta(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None and not torch.is_grad_enabled():
            out = rule(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


@contextmanager
def fast_meta() -> Iterator[None]:
    """Within: the torch calls ``_RULES`` knows are answered by shape rules where they apply exactly."""
    with _FastMeta():
        yield


__all__ = ["fast_meta"]

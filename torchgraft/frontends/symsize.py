"""Sizes that remember where they came from, so traced shapes stay symbolic.

During a concrete trace, ``x.shape`` and ``x.size(d)`` return ``SymInt``s: real ints
(everything that reads them sees the actual value) that also know how they were
computed (``x.size(0)``, ``a * b``). When one reaches a torch call (``x.view(b, s, -1)``)
the recorder writes that computation into the graph instead of the number, so the
emitted model runs at other batch sizes and sequence lengths. Comparisons (and ``bool``)
return plain values, so a branch on a size follows the
example; the recorder then adds a guard (``frontends.guards.size_guard``) checking at run
time that the comparison comes out the same, with the source line that made it. A size that
becomes a plain number (``n / 2``, ``float(n)``, ``math.sqrt(n)``, ``n * 0.5``) is guarded to
stay what it was. Python reads an int subclass's value directly in ``range(n)`` and in slices,
so while a trace runs ``range`` is one that guards its size arguments (``pinning_range``), and
capture copies the source of forwards that loop over sizes in their own code.
"""

from __future__ import annotations

import builtins
import contextlib
import operator
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

Materialize = Callable[[], str]
"""Writes the ops computing a value into the graph (once) and returns its name."""


class SymInt(int):
    """An int computed from tensor sizes; ``name()`` materialises its computation on first use."""

    _thunk: Materialize
    _name: str | None

    def __new__(cls, value: int, thunk: Materialize) -> SymInt:
        obj = int.__new__(cls, value)
        obj._thunk = thunk
        obj._name = None
        return obj

    def name(self) -> str:
        """The graph value holding this int (its ops are recorded on the first call)."""
        if self._name is None:
            self._name = self._thunk()
        return self._name


def _plain(n: int) -> int:
    """The plain int of ``n`` (a SymInt's value) without pinning it: ``int(n)`` is the model's own call."""
    return int.__int__(n)


def pin(*values: Any, loop: bool = False) -> None:
    """A size left the symbolic world (``n / 2``, ``float(n)``, ``n * 0.5``): the result is a plain
    number, so guard that each size is what it was in the example. ``loop``: it is the trip count
    of a ``for ... in range(n)`` the trace unrolls (its guard message says so)."""
    recorder = _RECORDER.value
    if recorder is None:
        return
    site = call_site()
    for v in values:
        if isinstance(v, SymInt):
            recorder.compare("eq", v, _plain(v), True, site, loop=loop)


def _binary(op: Callable[[Any, Any], Any], opname: str, reverse: bool = False) -> Callable[..., Any]:
    def method(self: SymInt, other: Any) -> Any:
        if not isinstance(other, int) or isinstance(other, bool):
            out = op(_plain(self), other) if not reverse else op(other, _plain(self))
            if out is not NotImplemented:
                pin(self)
            return out
        a, b = (other, self) if reverse else (self, other)
        value = op(_plain(a), _plain(b))
        if not isinstance(value, int):
            pin(a, b)
            return value
        recorder = _RECORDER.value
        if recorder is None:
            return value
        return SymInt(value, lambda: recorder.int_op(opname, a, b))
    return method


def _unary(op: Callable[[Any], Any]) -> Callable[..., Any]:
    """``-n``, ``abs(n)``: written as ``0 - n`` / guarded, so they never bake a number silently."""
    def method(self: SymInt) -> Any:
        if op is operator.pos:
            return self
        value = op(_plain(self))
        recorder = _RECORDER.value
        if recorder is not None and op is operator.neg:
            return SymInt(value, lambda: recorder.int_op("sub", 0, self))
        pin(self)
        return value
    return method


class _Current(threading.local):
    """The recorder of the concrete trace running in this thread (``value``; None when there is none)."""

    def __init__(self) -> None:
        self.value: Any = None


_RECORDER = _Current()
"""Per thread: a size computed in another thread never reaches this thread's trace, and the other
thread's sizes and ranges are never guarded."""

for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("floordiv", operator.floordiv), ("mod", operator.mod), ("truediv", operator.truediv),
                   ("pow", operator.pow)):
    setattr(SymInt, f"__{_name}__", _binary(_op, _name))
    setattr(SymInt, f"__r{_name}__", _binary(_op, _name, reverse=True))
for _name, _fn in (("neg", operator.neg), ("abs", operator.abs), ("pos", operator.pos)):
    setattr(SymInt, f"__{_name}__", _unary(_fn))


def _as_float(self: SymInt) -> float:
    """``float(n)``, ``math.sqrt(n)``: a plain number from here on, so the size is guarded."""
    pin(self)
    return float(_plain(self))


SymInt.__float__ = _as_float  # type: ignore[method-assign,assignment]


def _as_int(self: SymInt) -> int:
    """``int(n)``: a plain int from here on (``x[:, : int(n) - 1]``), so the size is guarded."""
    pin(self)
    return _plain(self)


SymInt.__int__ = _as_int  # type: ignore[method-assign,assignment]


def _compare(opname: str) -> Callable[..., Any]:
    def method(self: SymInt, other: Any) -> Any:
        op = getattr(operator, opname)
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return op(_plain(self), other)
        held = op(_plain(self), other if isinstance(other, float) else _plain(other))
        recorder = _RECORDER.value
        if recorder is not None:
            held = recorder.compare(opname, self, other, held, call_site(), branch=True)
        return held
    return method


def call_site() -> str:
    """``file.py:123`` of the model code that used a size (the first frame outside torchgraft and torch)."""
    frame = sys._getframe(1)
    while frame is not None and (_ours(frame.f_code.co_filename)):
        frame = frame.f_back  # type: ignore[assignment]
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"



def _ours(filename: str) -> bool:
    return f"{os.sep}torchgraft{os.sep}" in filename or f"{os.sep}torch{os.sep}" in filename


for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(SymInt, f"__{_name}__", _compare(_name))
SymInt.__hash__ = int.__hash__  # type: ignore[method-assign]


def _truth(self: SymInt) -> bool:
    """``if n:``: a branch on whether a size is zero."""
    return self != 0


SymInt.__bool__ = _truth  # type: ignore[method-assign,assignment]


class SymSize(tuple):  # torch.Size cannot be subclassed; a tuple reads the same almost everywhere
    """``x.shape`` whose items are SymInts (slicing and unpacking keep them). ``negative`` holds the same
    sizes counted from the end: ``x.shape[-1]`` is written ``x.size(-1)``, which stays the last dim
    for an input of another rank (``x.size(1)`` would not)."""

    _negative: tuple[Any, ...]

    def __new__(cls, items: tuple[Any, ...], negative: tuple[Any, ...] | None = None) -> SymSize:
        obj = super().__new__(cls, items)
        obj._negative = negative if negative is not None else tuple(items)
        return obj

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        from_end = isinstance(key, int) and key < 0 or (
            isinstance(key, slice) and isinstance(key.start, int) and key.start < 0)
        if isinstance(key, slice):
            pos, neg = tuple.__getitem__(self, key), self._negative[key]
            return SymSize(neg, neg) if from_end else SymSize(pos, neg)
        return self._negative[key] if from_end else tuple.__getitem__(self, key)

    def numel(self) -> int:
        """Product of the sizes, like ``torch.Size.numel`` (symbolic when the sizes are)."""
        n: int = 1
        for d in self:
            n = d * n if isinstance(d, SymInt) else n * d
        return n


_RANGE = builtins.range
_RANGE_LOCK = threading.Lock()
_RANGE_USERS = [0]  # concrete traces running now, in any thread


class _RangeType(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _RANGE)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _RANGE)


class _PinningRange(metaclass=_RangeType):
    """``range`` while a concrete trace runs: a real ``range``, whose size arguments are guarded
    (``for i in range(x.size(1))`` unrolls for the example's size)."""

    def __new__(cls, *args: Any) -> Any:  # type: ignore[misc]
        pin(*args, loop=True)
        return _RANGE(*args)


@contextlib.contextmanager
def pinning_range() -> Iterator[None]:
    """Swap ``builtins.range`` for one that guards sizes, for the duration of a concrete trace
    (``isinstance(r, range)`` still holds for every range). Other threads see the swap, but their
    ``range`` calls build a plain range and guard nothing (``pin`` reads this thread's recorder);
    the original comes back when the last trace of any thread ends."""
    with _RANGE_LOCK:
        _RANGE_USERS[0] += 1
        builtins.range = _PinningRange  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        with _RANGE_LOCK:
            _RANGE_USERS[0] -= 1
            if not _RANGE_USERS[0]:
                builtins.range = _RANGE  # type: ignore[misc]

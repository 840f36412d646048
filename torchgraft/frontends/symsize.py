"""Sizes that remember where they came from, so traced shapes stay symbolic.

During a concrete trace, ``x.shape`` and ``x.size(d)`` return ``SymInt``s: real ints
(everything that reads them sees the actual value) that also know how they were
computed (``x.size(0)``, ``a * b``). When one reaches a torch call (``x.view(b, s, -1)``)
the recorder writes that computation into the graph instead of the number, so the
emitted model runs at other batch sizes and sequence lengths. Comparisons (and ``bool``,
``range(n)``, indexing with one) return plain values, so a branch on a size follows the
example; the recorder then adds a guard (``frontends.guards.size_guard``) checking at run
time that the comparison comes out the same, with the source line that made it.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
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


def _binary(op: Callable[[Any, Any], Any], opname: str, reverse: bool = False) -> Callable[..., Any]:
    def method(self: SymInt, other: Any) -> Any:
        if not isinstance(other, int) or isinstance(other, bool):
            return op(int(self), other) if not reverse else op(other, int(self))
        a, b = (other, self) if reverse else (self, other)
        value = op(int(a), int(b))
        if not isinstance(value, int):
            return value
        recorder = _RECORDER[0]
        if recorder is None:
            return value
        return SymInt(value, lambda: recorder.int_op(opname, a, b))
    return method


_RECORDER: list[Any] = [None]
"""The active recorder (set by the concrete tracer while it runs)."""

for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("floordiv", operator.floordiv), ("mod", operator.mod)):
    setattr(SymInt, f"__{_name}__", _binary(_op, _name))
    setattr(SymInt, f"__r{_name}__", _binary(_op, _name, reverse=True))


def _compare(opname: str) -> Callable[..., Any]:
    def method(self: SymInt, other: Any) -> Any:
        op = getattr(operator, opname)
        if not isinstance(other, int) or isinstance(other, bool):
            return op(int(self), other)
        held = op(int(self), int(other))
        recorder = _RECORDER[0]
        if recorder is not None:
            recorder.compare(opname, self, other, held, _site())
        return held
    return method


def _site() -> str:
    """``file.py:123`` of the code that compared a size (the first frame outside this module)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(SymInt, f"__{_name}__", _compare(_name))
SymInt.__hash__ = int.__hash__  # type: ignore[method-assign]


def _as_int(self: SymInt) -> int:
    """``range(n)``, ``lst[n]``: the value is used as a plain int, so it must stay the same."""
    value = int(self)
    recorder = _RECORDER[0]
    if recorder is not None:
        recorder.compare("eq", self, value, True, _site())
    return value


def _truth(self: SymInt) -> bool:
    """``if n:``: a branch on whether a size is zero."""
    return self != 0


SymInt.__index__ = _as_int  # type: ignore[method-assign,assignment]
SymInt.__bool__ = _truth  # type: ignore[method-assign,assignment]


class SymSize(tuple):  # torch.Size cannot be subclassed; a tuple reads the same almost everywhere
    """``x.shape`` whose items are SymInts (slicing and unpacking keep them)."""

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        got = tuple.__getitem__(self, key)
        return SymSize(got) if isinstance(key, slice) else got

    def numel(self) -> int:
        """Product of the sizes, like ``torch.Size.numel``."""
        n = 1
        for d in self:
            n *= int(d)
        return n

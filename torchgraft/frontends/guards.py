"""Guards: the assumptions a trace takes from one example, written back as run-time checks.

A trace sees one call. Whatever it decided from that call's concrete values is kept as a
``Guard`` op right where it was decided, so the emitted forward raises a ``ValueError``
naming the assumption instead of silently computing something else:

- an optional argument that was None (``if attention_mask is not None: raise ...``), or
  that was given where its default is None;
- a non-tensor argument the trace specialised on (``use_cache=False``);
- a comparison of sizes (``if x.shape[-1] > 32:``), with the source line that made it.

Each helper returns the ops to append: the condition (a comparison) and the guard.
"""

from __future__ import annotations

from typing import Any

from torchgraft.ir.graph import FunctionCall, Guard, Op
from torchgraft.ir.values import Arg, Const, Ref

HOW = "capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"


def where_text(where: str, cls: str) -> str:
    """``encoder.layer.0.attention (BertSelfAttention)``: the module a guard belongs to."""
    return f"{where or '<root>'} ({cls})"


def _pair(name: str, compare: str, left: Arg, right: Arg, message: str) -> list[Op]:
    cond = Op(f"{name}_ok", FunctionCall(f"operator.{compare}"), (left, right))
    return [cond, Op(name, Guard(message), (Ref(cond.name),))]


def none_guard(name: str, arg: str, where: str, was_none: bool) -> list[Op]:
    """Ops checking that ``arg`` is None (``was_none``) or is not, as it was in the example."""
    if was_none:
        msg = f"{where} was captured with {arg}=None, so a value passed for it would be ignored; {HOW}"
        return _pair(name, "is_", Ref(arg), Const(None), msg)
    msg = f"{where} was captured with {arg} given; calling it with {arg}=None takes another path; {HOW}"
    return _pair(name, "is_not", Ref(arg), Const(None), msg)


def value_guard(name: str, arg: str, value: Any, where: str) -> list[Op]:
    """Ops checking that a non-tensor argument has the value the trace specialised on."""
    msg = f"{where} was captured with {arg}={value!r}; other values take another path; {HOW}"
    compare = "is_" if value is None or isinstance(value, bool) else "eq"
    return _pair(name, compare, Ref(arg), Const(value), msg)


_SYMBOL = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_FLIP = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


def size_guard(name: str, compare: str, left: Arg, right: Arg, held: bool, where: str, site: str) -> list[Op]:
    """Ops checking that a comparison of sizes comes out as it did in the example (``compare`` is
    ``lt``/``le``/``gt``/``ge``/``eq``/``ne``; when it was false, its negation is what is checked)."""
    kept = compare if held else _FLIP[compare]
    msg = (f"{where} was captured where a size comparison ({_SYMBOL[compare]}) at {site} was {held}; "
           f"inputs for which it is {not held} take another branch; {HOW}")
    return _pair(name, kept, left, right, msg)


__all__ = ["HOW", "none_guard", "size_guard", "value_guard", "where_text"]

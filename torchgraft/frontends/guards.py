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

from torchgraft.ir.graph import FunctionCall, Graph, Guard, Op
from torchgraft.ir.nodes import Block, Node
from torchgraft.ir.traverse import walk
from torchgraft.ir.values import Arg, Const, Ref

HOW = "capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"


def where_text(where: str, cls: str) -> str:
    """``encoder.layer.0.attention (BertSelfAttention)``: the module a guard belongs to."""
    return f"{where or '<root>'} ({cls})"


def _pair(name: str, compare: str, left: Arg, right: Arg, message: str, kind: str = "argument",
          site: str = "") -> list[Op]:
    cond = Op(f"{name}_ok", FunctionCall(f"operator.{compare}"), (left, right))
    return [cond, Op(name, Guard(message, kind, site), (Ref(cond.name),))]


def none_guard(name: str, arg: str, where: str, was_none: bool) -> list[Op]:
    """Ops checking that ``arg`` is None (``was_none``) or is not, as it was in the example."""
    if was_none:
        msg = f"{where} was captured with {arg}=None, so a value passed for it would be ignored; {HOW}"
        return _pair(name, "is_", Ref(arg), Const(None), msg)
    msg = f"{where} was captured with {arg} given; calling it with {arg}=None takes another path; {HOW}"
    return _pair(name, "is_not", Ref(arg), Const(None), msg)


def value_guard(name: str, arg: str, value: Any, where: str) -> list[Op]:
    """Ops checking that a non-tensor argument has the value the trace specialised on."""
    if value is None:
        return none_guard(name, arg, where, was_none=True)
    msg = f"{where} was captured with {arg}={value!r}; other values take another path; {HOW}"
    compare = "is_" if isinstance(value, bool) else "eq"
    return _pair(name, compare, Ref(arg), Const(value), msg)


def _short(site: str) -> str:
    """``transformers/masking_utils.py:229`` for a site under site-packages; the path as given otherwise."""
    marker = "site-packages/"
    return site.split(marker, 1)[1] if marker in site else site


def size_sites(ops: tuple[Op, ...]) -> list[str]:
    """The source sites (``file.py:123``) of the size guards among ``ops``."""
    return [op.target.site for op in ops if isinstance(op.target, Guard) and op.target.kind == "size"]


def count_guard(name: str, arg: str, count: int, where: str, keyword: bool, what: str = "") -> list[Op]:
    """Ops checking that ``*args``/``**kwargs`` (or a list/tuple argument, ``what="items"``) hold as many
    items as in the example: an extra one would be accepted and ignored, or a loop unrolled too short."""
    if what:
        msg = f"{where} was captured with {count} {what} in {arg}"
    elif keyword:
        msg = f"{where} was captured with {count} keyword arguments in **{arg}"
    else:
        msg = f"{where} was captured with {count} extra positional arguments in *{arg}"
    msg += f"; others would be ignored; {HOW}"
    size = Op(f"{name}_len", FunctionCall("builtins.len"), (Ref(arg),))
    return [size, *_pair(name, "eq", Ref(size.name), Const(count), msg)]


def dtype_check(name: str, dtype_value: Arg, dtype: Any, where: str, site: str) -> list[Op]:
    """Ops checking that a tensor whose dtype the forward read still has the example's dtype."""
    msg = (f"{where} was captured with a {str(dtype).removeprefix('torch.')} tensor whose dtype it reads at "
           f"{_short(site)}; other dtypes may take another path; capture with an example of that dtype")
    return _pair(name, "eq", dtype_value, Const(dtype), msg)


def bool_check(name: str, value: Arg, what: str, held: bool, where: str, site: str) -> list[Op]:
    """Ops checking that a tensor method or property giving a bool (``x.is_contiguous()``) gives what it
    gave in the example."""
    msg = (f"{where} was captured where a tensor's {what} was {held} at {_short(site)}; inputs for which it "
           f"is {not held} may take another path; {HOW}")
    return _pair(name, "is_", value, Const(held), msg, "size", site)


_SYMBOL = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_FLIP = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


def size_guard(name: str, compare: str, left: Arg, right: Arg, held: bool, where: str, site: str,
               loop: bool = False) -> list[Op]:
    """Ops checking that a comparison of sizes comes out as it did in the example (``compare`` is
    ``lt``/``le``/``gt``/``ge``/``eq``/``ne``; when it was false, its negation is what is checked).
    ``loop``: ``left`` is the trip count of a ``range`` loop the trace unrolled, pinned to ``right``."""
    kept = compare if held else _FLIP[compare]
    msg = (f"{where} was captured where a size comparison ({_SYMBOL[compare]}) at {_short(site)} was {held}; "
           f"inputs for which it is {not held} take another branch; {HOW}")
    if loop and isinstance(right, Const):
        msg = (f"{where} loops over range({right.value}) at {_short(site)}, a trip count that follows an input "
               f"size; the loop was unrolled for the example, so only inputs for which that size is "
               f"{right.value} are accepted; capture with an example of the size you will run (one capture "
               "per size)")
    return _pair(name, kept, left, right, msg, "size", site)


def guards_of(root: Node, path: str = "") -> list[tuple[str, str, str]]:
    """Every guard in the model as (module path, kind, message), in module order."""
    out: list[tuple[str, str, str]] = []
    for p, node in walk(root, path):
        if isinstance(node, Block):
            for body in (node.body, node.train_body):
                if isinstance(body, Graph):
                    out += [(p, op.target.kind, op.target.message) for op in body.ops if isinstance(op.target, Guard)]
    return list(dict.fromkeys(out))


__all__ = ["HOW", "bool_check", "count_guard", "dtype_check", "guards_of", "none_guard", "size_guard", "size_sites",
           "value_guard",
           "where_text"]

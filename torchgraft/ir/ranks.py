"""Ranks a graph fixes whatever its inputs: ``torch.arange(n).unsqueeze(0)`` has 2 dims for every call.

``static_rank(g, name)`` follows the ops that made a value back to where its rank comes from. It answers
only when no input's rank is involved (an input tensor may come with another number of dims): a range
(``torch.arange``: 1), and ops whose result rank follows from their operands' by a fixed rule
(``unsqueeze``: +1; ``expand``/``view``/``reshape`` with their sizes listed: as many; elementwise
arithmetic with a number, dtype and layout changes: the same). Anything else: None.

>>> static_rank(graph, "position_ids")   # arange(...).add(0).unsqueeze(0)   # doctest: +SKIP
2
"""

from __future__ import annotations

from torchgraft.ir.graph import FunctionCall, Graph, MethodCall, Op
from torchgraft.ir.values import Arg, Const, Ref, Seq

_RANGES = frozenset({"torch.arange"})
"""Functions whose result is 1-d whatever their (number) arguments."""
_SAME = frozenset({"add", "sub", "mul", "div", "float", "long", "int", "bool", "half", "to", "contiguous", "clone",
                   "neg", "detach"})
"""Tensor methods whose result has the receiver's rank when every other argument is a number, dtype or device."""
_SIZED = frozenset({"expand", "view", "reshape"})
"""Tensor methods whose result has as many dims as sizes listed."""


def listed_sizes(op: Op) -> tuple[Arg, ...]:
    """The sizes ``x.expand(a, b)``/``x.view((a, b))`` lists, whether given one by one or as one tuple."""
    if len(op.args) == 2 and isinstance(op.args[1], Seq):
        return op.args[1].items
    return op.args[1:]


_INT_ARITHMETIC = frozenset({"operator.add", "operator.sub", "operator.mul", "operator.floordiv", "operator.mod"})


def _one_int(g: Graph, arg: Arg, depth: int = 16) -> bool:
    """Whether ``arg`` is one integer (a literal, ``x.size(d)``, or integer arithmetic on those), not a dtype
    (``x.view(torch.int32)``) nor a whole shape (``x.view(y.shape)``), which fix no rank."""
    if isinstance(arg, Const):
        return type(arg.value) is int
    op = next((o for o in g.ops if isinstance(arg, Ref) and o.name == arg.name), None)
    if op is None or depth <= 0 or op.kwargs:
        return False
    if isinstance(op.target, MethodCall) and op.target.name == "size":
        return len(op.args) == 2 and isinstance(op.args[1], Const) and type(op.args[1].value) is int
    return isinstance(op.target, FunctionCall) and op.target.qualname in _INT_ARITHMETIC and \
        all(_one_int(g, a, depth - 1) for a in op.args)


def _plain(args: tuple[Arg, ...], kwargs: tuple[tuple[str, Arg], ...]) -> bool:
    """Only constants (numbers, dtypes), or values that are not tensors' ranks' business (a device read)."""
    return all(isinstance(a, Const) for a in args) and all(isinstance(v, Const) or k == "device" for k, v in kwargs)


def static_rank(g: Graph, name: str, depth: int = 64) -> int | None:
    """The number of dims of value ``name`` of ``g`` for every call, or None when it may vary (or is unknown)."""
    op = next((o for o in g.ops if o.name == name), None)
    if op is None or depth <= 0:
        return None
    t = op.target
    if isinstance(t, FunctionCall) and t.qualname in _RANGES:
        return 1 if all(isinstance(a, (Const, Ref)) for a in op.args) else None
    if not isinstance(t, MethodCall) or not op.args or not isinstance(op.args[0], Ref):
        return None
    if t.name in _SIZED and not op.kwargs:
        sizes = listed_sizes(op)
        return len(sizes) if sizes and all(_one_int(g, s) for s in sizes) else None
    inner = static_rank(g, op.args[0].name, depth - 1)
    if inner is None:
        return None
    if t.name == "unsqueeze" and len(op.args) == 2 and isinstance(op.args[1], Const) and not op.kwargs:
        return inner + 1
    if t.name in _SAME and _plain(op.args[1:], op.kwargs):
        return inner
    return None


__all__ = ["listed_sizes", "static_rank"]

"""Which graph ops have effects beyond their result: the one place that decides what may be dropped.

An op is *pure* when dropping it, if nothing reads its result, cannot change what the
forward computes or raises: reading attributes and sizes, arithmetic, out-of-place torch
functions and tensor methods. In-place forms (``x.add_``, ``operator.iadd``,
``inplace=True``, ``out=``), item assignment, child calls (a child may update its state)
and guards are not.
"""

from __future__ import annotations

from torchgraft.ir.graph import FunctionCall, GetAttr, Graph, Guard, MethodCall, Op
from torchgraft.ir.opkinds import FUNCTIONS, TRAITS, function_in_place, is_operator, kind_of, method_kind, symbol_of
from torchgraft.ir.types import ScalarType
from torchgraft.ir.values import Const, Ref

_IMPURE_FUNCTIONS = frozenset({"operator.delitem", "torch._assert", "builtins.print",
                               *(f"torch.{n}" for n in ("rand", "randn", "randint", "randperm", "rand_like",
                                                        "randn_like", "randint_like", "bernoulli", "multinomial",
                                                        "normal", "poisson", "manual_seed", "seed"))})
"""Besides writes: draws from the RNG, which later draws depend on, so an unused draw still counts."""
_PURE_BUILTINS = frozenset({"builtins.getattr", "builtins.len", "builtins.int", "builtins.float", "builtins.bool",
                            "builtins.tuple", "builtins.list", "builtins.min", "builtins.max", "builtins.abs",
                            "builtins.isinstance", "builtins.slice", "builtins.range"})
_IMPURE_METHODS = frozenset({"register_hook", "retain_grad", "backward", "record_stream", "share_memory_"})
_CONTAINER_WRITES = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault",
                               "popitem", "discard", "sort", "reverse", "__setitem__", "__delitem__"})
"""Methods of lists, dicts and sets that change the object (``features.append(x)``): never dropped, even when
nothing reads what they return. (``add`` is a set's write too, but a tensor's sum: its ``None`` result says.)"""


AUGMENTED = {k: symbol_of(Op("op", FunctionCall(k), (Ref("a"), Ref("b")))) for k, v in FUNCTIONS.items()
             if v.in_place and k.startswith("operator.") and TRAITS[v.kind].symbol}
"""In-place ``operator`` functions and the statement that spells them (``operator.iadd``: ``+=``), from
the op kind table (``ir/opkinds.py``)."""


def augmented_symbol(op: Op) -> str | None:
    """``+=`` for ``operator.iadd(a, b)`` on a named value (written ``a += b``), else None."""
    if not (len(op.args) == 2 and not op.kwargs and isinstance(op.args[0], Ref)):
        return None
    return symbol_of(op) if is_operator(op) and kind_of(op) is not None and kind_of(op).in_place else None  # type: ignore[union-attr]


def in_place(op: Op) -> bool:
    """True when the op writes into one of its arguments (``x.mul_(2)``, ``x += y``, ``inplace=True``): the
    op kind table says so for the spellings it knows; otherwise a trailing ``_`` (``torch.relu_``) does."""
    t = op.target
    kwargs = dict(op.kwargs)
    if kwargs.get("inplace") == Const(True) or "out" in kwargs:
        return True
    found = kind_of(op) if isinstance(t, FunctionCall) else method_kind(t.name) if isinstance(t, MethodCall) else None
    if found is not None:
        return found.in_place
    if isinstance(t, MethodCall):  # x.mul_(2), and the dunder forms x.__iadd__(1)
        return (t.name.endswith("_") and not t.name.startswith("_")) or \
            (t.name.startswith("__i") and t.name.endswith("__"))
    if isinstance(t, FunctionCall):
        return function_in_place(t.qualname)
    return False


SHAPE_WRITES = frozenset({"t_", "transpose_", "swapdims_", "swapaxes_", "unsqueeze_", "squeeze_", "resize_",
                          "resize_as_", "as_strided_", "set_", "detach_"})
"""In-place tensor methods that change a tensor's shape, strides or storage, not only its values."""


def writes_shape(g: Graph) -> bool:
    """Whether a forward changes a tensor's shape or layout in place (``x.t_()``): then a size read, a view or
    ``contiguous()`` of that tensor means something else before and after, and none may be moved or merged."""
    return any(isinstance(op.target, MethodCall) and op.target.name in SHAPE_WRITES for op in g.ops)


def is_pure(op: Op) -> bool:
    """True for ops without side effects, which may be left out when nothing reads their result."""
    t = op.target
    if isinstance(t, Guard) or in_place(op):
        return False
    if isinstance(t, GetAttr):
        return True
    if isinstance(t, MethodCall):
        if t.name in _IMPURE_METHODS or t.name in _CONTAINER_WRITES or t.name in ("bernoulli", "multinomial"):
            return False
        return op.type != ScalarType("None")  # a method that returns nothing is called for what it does
    if isinstance(t, FunctionCall):
        ns = t.qualname.rpartition(".")[0]
        found = kind_of(op)
        if t.qualname in _IMPURE_FUNCTIONS or (found is not None and (not TRAITS[found.kind].pure
                                                                       or TRAITS[found.kind].random)):
            return False
        if ns == "builtins":
            return t.qualname in _PURE_BUILTINS
        return ns == "operator" or (ns.startswith("torch") and not t.qualname.rpartition(".")[2].startswith("_"))
    return False  # child calls and primitives may hold or update state


__all__ = ["AUGMENTED", "SHAPE_WRITES", "augmented_symbol", "in_place", "is_pure", "writes_shape"]


def pruned(g: Graph) -> Graph:
    """``g`` without pure ops nobody reads (repeated until none is left)."""
    while True:
        users = g.users()
        dead = {op.name for op in g.ops if is_pure(op) and not users.get(op.name)}
        if not dead:
            return g
        g = Graph(g.inputs, tuple(op for op in g.ops if op.name not in dead), g.output)


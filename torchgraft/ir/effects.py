"""Which graph ops have effects beyond their result: the one place that decides what may be dropped.

An op is *pure* when dropping it, if nothing reads its result, cannot change what the
forward computes or raises: reading attributes and sizes, arithmetic, out-of-place torch
functions and tensor methods. In-place forms (``x.add_``, ``operator.iadd``,
``inplace=True``, ``out=``), item assignment, child calls (a child may update its state)
and guards are not.
"""

from __future__ import annotations

from torchgraft.ir.graph import FunctionCall, GetAttr, Guard, MethodCall, Op
from torchgraft.ir.values import Const, Ref

_IMPURE_FUNCTIONS = frozenset({"operator.setitem", "operator.delitem", "torch._assert", "builtins.print"})
_PURE_BUILTINS = frozenset({"builtins.getattr", "builtins.len", "builtins.int", "builtins.float", "builtins.bool",
                            "builtins.tuple", "builtins.list", "builtins.min", "builtins.max", "builtins.abs",
                            "builtins.isinstance", "builtins.slice", "builtins.range"})
_IMPURE_METHODS = frozenset({"register_hook", "retain_grad", "backward", "record_stream", "share_memory_"})
_IN_PLACE_OPERATORS = frozenset({"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul",
                                 "iand", "ior", "ixor", "ilshift", "irshift", "iconcat"})


AUGMENTED = {"iadd": "+=", "isub": "-=", "imul": "*=", "itruediv": "/="}
"""In-place ``operator`` functions and the statement that spells them (``out += identity``)."""


def augmented_symbol(op: Op) -> str | None:
    """``+=`` for ``operator.iadd(a, b)`` on a named value (written ``a += b``), else None."""
    t = op.target
    if not (isinstance(t, FunctionCall) and t.qualname.startswith("operator.") and len(op.args) == 2
            and not op.kwargs and isinstance(op.args[0], Ref)):
        return None
    return AUGMENTED.get(t.qualname.rpartition(".")[2])


def in_place(op: Op) -> bool:
    """True when the op writes into one of its arguments (``x.mul_(2)``, ``x += y``, ``inplace=True``)."""
    t = op.target
    kwargs = dict(op.kwargs)
    if kwargs.get("inplace") == Const(True) or "out" in kwargs:
        return True
    if isinstance(t, MethodCall):
        return t.name.endswith("_") and not t.name.startswith("_")
    if isinstance(t, FunctionCall):
        ns, _, name = t.qualname.rpartition(".")
        return (ns == "operator" and name in _IN_PLACE_OPERATORS) or (
            ns.startswith("torch") and name.endswith("_") and not name.startswith("_"))
    return False


def is_pure(op: Op) -> bool:
    """True for ops without side effects, which may be left out when nothing reads their result."""
    t = op.target
    if isinstance(t, Guard) or in_place(op):
        return False
    if isinstance(t, GetAttr):
        return True
    if isinstance(t, MethodCall):
        return t.name not in _IMPURE_METHODS
    if isinstance(t, FunctionCall):
        ns = t.qualname.rpartition(".")[0]
        if t.qualname in _IMPURE_FUNCTIONS:
            return False
        if ns == "builtins":
            return t.qualname in _PURE_BUILTINS
        return ns == "operator" or (ns.startswith("torch") and not t.qualname.rpartition(".")[2].startswith("_"))
    return False  # child calls and primitives may hold or update state


__all__ = ["AUGMENTED", "augmented_symbol", "in_place", "is_pure"]

"""Arguments and single ops as Python expressions (code strings with a precedence)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from torchgraft.backends.torch.names import str_lit
from torchgraft.errors import EmitError
from torchgraft.ir.activations import Spelling, functional_params
from torchgraft.ir.graph import ChildCall, FunctionCall, GetAttr, Guard, MethodCall, Op, PrimCall
from torchgraft.ir.opkinds import TRAITS, OpKind, is_kind, is_operator, kind_of, negated
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.values import Arg, ByMode, Const, DictArg, Ref, Seq, Slice, Training

ATOM, POSTFIX, UNARY, POW, MUL, ADD, SHIFT, BAND, BXOR, BOR, CMP = 100, 90, 80, 85, 70, 60, 55, 50, 45, 40, 30
PRECEDENCE = {OpKind.ADD: ADD, OpKind.SUB: ADD, OpKind.MUL: MUL, OpKind.TRUEDIV: MUL, OpKind.FLOORDIV: MUL,
              OpKind.MOD: MUL, OpKind.MATMUL: MUL, OpKind.POW: POW, OpKind.AND: BAND, OpKind.OR: BOR,
              OpKind.XOR: BXOR, OpKind.LSHIFT: SHIFT, OpKind.RSHIFT: SHIFT, OpKind.EQ: CMP, OpKind.NE: CMP,
              OpKind.LT: CMP, OpKind.LE: CMP, OpKind.GT: CMP, OpKind.GE: CMP, OpKind.IS: CMP, OpKind.IS_NOT: CMP}
"""How tightly each infix operator binds in Python (its symbol comes from the op kind table)."""
UNARY_KINDS = frozenset({OpKind.NEG, OpKind.POS, OpKind.INVERT, OpKind.NOT})

@dataclass
class Code:
    """An expression and its precedence (higher binds tighter)."""

    text: str
    prec: int = ATOM

    def wrap(self, at_least: int) -> str:
        """The text, parenthesised when it binds looser than ``at_least``."""
        return self.text if self.prec >= at_least else f"({self.text})"


@dataclass
class ExprContext:
    """What rendering needs: value expressions, how to reach members, which imports got used."""

    values: dict[str, Code]
    accessor: Callable[[str], str]
    imports: set[str] = field(default_factory=set)
    lists: dict[Seq, str] = field(default_factory=dict)
    """Lists held in a variable: a loop appended their items (``loops.py``)."""


def const_code(v: Any) -> str:
    """A literal for a constant; floats like inf/nan are written so they parse."""
    if isinstance(v, float):
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else '-float("inf")'
        return repr(v)
    if isinstance(v, torch.dtype):
        return str(v)
    if isinstance(v, torch.device):
        return f"torch.device({str_lit(str(v))})"
    if isinstance(v, (torch.memory_format, torch.layout)):
        return str(v)
    if v is Ellipsis:
        return "..."
    if isinstance(v, str):
        return str_lit(v)
    if isinstance(v, (bool, int, type(None), complex)):
        return repr(v)
    raise EmitError(f"cannot write constant {v!r} of type {type(v).__name__}")


def arg_code(a: Arg, ctx: ExprContext, in_subscript: bool = False) -> Code:
    """Code for an argument."""
    if isinstance(a, Ref):
        return ctx.values[a.name]
    if isinstance(a, Const):
        text = const_code(a.value)
        return Code(text, UNARY if text.startswith("-") else ATOM)
    if isinstance(a, Training):
        return Code("self.training")
    if isinstance(a, ByMode):
        return Code(f"{const_code(a.train.value)} if self.training else {const_code(a.eval.value)}", 5)
    if isinstance(a, DictArg):
        return Code("{" + ", ".join(f"{str_lit(k)}: {arg_code(v, ctx).text}" for k, v in a.items) + "}")
    if isinstance(a, Slice):
        parts = [("" if isinstance(p, Const) and p.value is None else arg_code(p, ctx).text)
                 for p in (a.start, a.stop, a.step)]
        if in_subscript:
            return Code(slice_code(*parts))
        return Code(f"slice({', '.join(p or 'None' for p in parts)})")
    if isinstance(a, Seq):
        alias = ctx.lists.get(a) if a.is_list and ctx.lists and all(isinstance(i, Ref) for i in a.items) else None
        if alias is not None:  # a list a loop built by appending (``features``)
            return Code(alias)
        items = [arg_code(i, ctx, in_subscript).text for i in a.items]
        if a.is_list:
            return Code(f"[{', '.join(items)}]")
        if in_subscript and items:
            return Code(", ".join(items) + ("," if len(items) == 1 else ""))
        return Code(f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})")
    raise EmitError(f"cannot write argument {a!r}")


_SIMPLE = re.compile(r"[-+~]*(?:[A-Za-z_]\w*|\d[\w.]*(?:[eE][-+]?\d+)?)")


def slice_code(start: str, stop: str, step: str) -> str:
    """``a:b:c`` in a subscript, spaced as ruff does: ``1:n``, but ``0 : n + 1`` when a part is not simple.

    >>> slice_code("0", "dim + 1", ""), slice_code("", "n", "2")
    ('0 : dim + 1', ':n:2')
    """
    parts = [start, stop, step] if step else [start, stop]
    if all(not p or _SIMPLE.fullmatch(p) for p in parts):
        return ":".join(parts)
    text = f"{start} :" if start else ":"
    text += f" {stop}" if stop else ""
    return text + ((" :" if stop else ":") + f" {step}" if step else "")


def _call_args(op: Op, ctx: ExprContext, skip: int = 0) -> str:
    pos = [arg_code(a, ctx).text for a in op.args[skip:]]
    kw = [f"{k}={arg_code(v, ctx).text}" for k, v in op.kwargs]
    return ", ".join(pos + kw)


def activation_code(prim: Activation, x: Code) -> Code:
    """``F.relu(x)``, ``torch.relu_(x)``, ``x.relu()``... as the op was spelled (functional when unknown).

    In-place sites stay in-place: ``inplace=True`` where F takes it, the tensor's ``_``
    method where one exists, else ``x.copy_(f(x))``.
    """
    k = prim.kind
    suffix = "_" if prim.inplace else ""
    recv = x.wrap(POSTFIX)
    if prim.spelling is Spelling.METHOD and k.method and hasattr(torch.Tensor, k.method + suffix):
        return Code(f"{recv}.{k.method}{suffix}()", POSTFIX)
    if prim.spelling is Spelling.TORCH and k.torch_fn and hasattr(torch, k.torch_fn + suffix):
        return Code(f"torch.{k.torch_fn}{suffix}({x.text})")
    opts = [f"{n}={const_code(v)}" for n, v in prim.options if k.options.get(n) != v]
    plain = f"torch.{k.functional}" if k.functional in ("sigmoid", "tanh") else f"F.{k.functional}"
    if not prim.inplace:
        return Code(f"{plain}({', '.join([x.text] + opts)})")
    if plain.startswith("F.") and "inplace" in functional_params(k):
        return Code(f"{plain}({', '.join([x.text] + opts + ['inplace=True'])})")
    if not opts and hasattr(torch.Tensor, k.functional + "_"):
        return Code(f"{recv}.{k.functional}_()", POSTFIX)
    return Code(f"{recv}.copy_({plain}({', '.join([x.text] + opts)}))", POSTFIX)


def prim_call_code(prim: Primitive, op: Op, ctx: ExprContext) -> Code:
    """A functional primitive call."""
    if isinstance(prim, Activation) and len(op.args) == 1 and not op.kwargs:
        return activation_code(prim, arg_code(op.args[0], ctx))
    raise EmitError(f"op {op.name!r}: no functional form for {prim.label()}")


def function_code(op: Op, ctx: ExprContext) -> Code:
    """A function call, with operators written infix and getattr/getitem as attribute/subscript."""
    assert isinstance(op.target, FunctionCall)
    found = kind_of(op) if is_operator(op) and not op.kwargs else None
    if found is not None and not found.in_place:
        symbol = TRAITS[found.kind].symbol
        if found.kind in PRECEDENCE and len(op.args) == 2:
            prec = PRECEDENCE[found.kind]
            left, right = arg_code(op.args[0], ctx), arg_code(op.args[1], ctx)
            rprec = prec + 1 if symbol != "**" else prec
            lprec = prec if symbol != "**" else prec + 1
            return Code(f"{left.wrap(lprec)} {symbol} {right.wrap(rprec)}", prec)
        if found.kind in UNARY_KINDS and len(op.args) == 1:
            space = " " if symbol.isalpha() else ""
            return Code(f"{symbol}{space}{arg_code(op.args[0], ctx).wrap(UNARY)}", UNARY)
        if found.kind is OpKind.SETITEM and len(op.args) == 3:
            obj = arg_code(op.args[0], ctx)
            idx = arg_code(op.args[1], ctx, in_subscript=True).text
            return Code(f"{obj.wrap(POSTFIX)}[{idx}] = {arg_code(op.args[2], ctx).text}", 0)
        if found.kind is OpKind.GETITEM and len(op.args) == 2:
            obj = arg_code(op.args[0], ctx)
            return Code(f"{obj.wrap(POSTFIX)}[{arg_code(op.args[1], ctx, in_subscript=True).text}]", POSTFIX)
    if is_kind(op, OpKind.GETATTR) and len(op.args) == 2 and isinstance(op.args[1], Const):
        attr = op.args[1].value
        if isinstance(attr, str) and attr.isidentifier():
            return Code(f"{arg_code(op.args[0], ctx).wrap(POSTFIX)}.{attr}", POSTFIX)
    ns, _, name = op.target.qualname.rpartition(".")  # how to write the function's module, not what it is
    if ns == "torch.nn.functional":
        prefix = "F."
    elif ns == "builtins" or ns == "helpers":
        prefix = ""
    else:
        prefix = ns + "."
        ctx.imports.add(ns.split(".")[0])
    return Code(f"{prefix}{name}({_call_args(op, ctx)})")


def guard_lines(op: Op, cond: Op | None, ctx: ExprContext) -> list[str]:
    """``if <condition fails>:`` and ``raise ValueError(...)`` for a Guard op; ``cond`` is the op computing
    its condition when that is a comparison used only here (written negated: ``if mask is not None:``)."""
    assert isinstance(op.target, Guard)
    flipped = negated(cond) if cond is not None else None
    if cond is not None and _is_not(cond):  # the guard passes when `not refused`: test `refused`
        test = arg_code(cond.args[0], ctx).text
    elif flipped is not None:
        test = function_code(flipped, ctx).text
    else:
        test = f"not {arg_code(op.args[0], ctx).wrap(UNARY)}"
    message = str_lit(op.target.message)
    if len(message) > GUARD_MESSAGE_WIDTH:  # laid out as ruff does a call that cannot fit
        return [f"if {test}:", "    raise ValueError(", f"        {message}", "    )"]
    return [f"if {test}:", f"    raise ValueError({message})"]


GUARD_MESSAGE_WIDTH = 88 - 8 - len("    raise ValueError()")
"""The longest guard message literal that fits on its ``raise`` line in a forward (at indent 8)."""


def negatable(op: Op) -> bool:
    """True for a comparison ``guard_lines`` can write negated (``a == b`` -> ``a != b``), or a ``not x``."""
    return negated(op) is not None or _is_not(op)


def _is_not(op: Op) -> bool:
    return is_kind(op, OpKind.NOT) and len(op.args) == 1 and not op.kwargs


def op_code(op: Op, ctx: ExprContext) -> Code:
    """The expression computing ``op``."""
    t = op.target
    if isinstance(t, ChildCall):
        return Code(f"{ctx.accessor(t.path)}({_call_args(op, ctx)})")
    if isinstance(t, GetAttr):
        return Code(ctx.accessor(t.path))
    if isinstance(t, MethodCall):
        recv = arg_code(op.args[0], ctx)
        return Code(f"{recv.wrap(POSTFIX)}.{t.name}({_call_args(op, ctx, skip=1)})", POSTFIX)
    if isinstance(t, PrimCall):
        return prim_call_code(t.prim, op, ctx)
    return function_code(op, ctx)

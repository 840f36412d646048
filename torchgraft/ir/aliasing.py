"""What a value may alias: is it a fresh tensor that a forward may write in place unseen?

``out += x`` reads like the join ``out + x`` only when ``out`` is a tensor the forward made and
holds alone. After ``h = self.drop(x)`` (eval-mode dropout returns ``x`` itself), ``h -= f(x)``
writes into the caller's ``x``. This module answers, for a value, a layer or a copied helper,
which of three things its result is (``Fresh``):

- ``NEW``: always a new tensor (a convolution, ``a + b``, a Chain ending in a BatchNorm);
- ``PASS``: its first input itself, or a new tensor (eval dropout, identity, an in-place
  activation, ``StochasticDepth``: ``return input`` or ``return input * noise``);
- ``UNKNOWN``: anything else (a view, a buffer, a user module's result that cannot be read).

Example::

    value_fresh("sd", ops, child)   # result = self.block(input); result = self.sd(result)
    -> Fresh.NEW                    # block ends in a BatchNorm; sd passes its input through
"""

from __future__ import annotations

import ast
import enum
import functools
from collections.abc import Callable, Mapping

from torchgraft.ir.functions import helper_name
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Op, PrimCall
from torchgraft.ir.model import Helper, HelperKind
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, Parallel, SkipConnection
from torchgraft.ir.opkinds import TRAITS, kind_of
from torchgraft.ir.primitives import Activation, BatchNorm, Conv, Dropout, GroupNorm, Identity, LayerNorm, Linear
from torchgraft.ir.traverse import node_at
from torchgraft.ir.values import Ref

ChildLookup = Callable[[str], "Node | None"]
"""The Block's child at a path (to know what a ChildCall returns), or None when unknown."""

NEW_TENSOR = (Conv, Linear, BatchNorm, LayerNorm, GroupNorm)
"""Layers whose result is always a new tensor (never their input or a view of it)."""
PASSTHROUGH = (Dropout, Identity)
"""Layers that may return their input itself (eval-mode dropout, identity)."""
_MAX_DEPTH = 64


class Fresh(enum.Enum):
    """What a result is, relative to its first input: see the module docstring."""

    NEW = "new"
    PASS = "pass"
    UNKNOWN = "unknown"

    def then(self, nxt: Fresh) -> Fresh:
        """The result of applying ``nxt`` to a value that is ``self``."""
        return self if nxt is Fresh.PASS else nxt

    def both(self, other: Fresh) -> Fresh:
        """What holds in either of two modes (eval and train bodies)."""
        if Fresh.UNKNOWN in (self, other):
            return Fresh.UNKNOWN
        return Fresh.NEW if self is other is Fresh.NEW else Fresh.PASS


def value_fresh(v: str, ops: Mapping[str, Op], child: ChildLookup | None,
                helpers: Mapping[str, Helper] | None = None, depth: int = 0) -> Fresh:
    """What the Graph value ``v`` is: ``PASS`` for a graph input (the caller's tensor), ``NEW`` for a
    tensor made here, following pass-through layers and helpers back to what they were given."""
    return _traced_back(v, ops, child, helpers, depth)[0]


def _traced_back(v: str, ops: Mapping[str, Op], child: ChildLookup | None, helpers: Mapping[str, Helper] | None,
                 depth: int) -> tuple[Fresh, str]:
    """``value_fresh`` and, for ``PASS``, the graph input the pass-through steps lead back to."""
    for _ in range(len(ops) + 1):  # a pass-through step goes back to its first argument
        op = ops.get(v)
        if op is None:
            return Fresh.PASS, v
        step = _op_fresh(op, child, helpers, depth)
        if step is not Fresh.PASS:
            return step, ""
        if not op.args or not isinstance(op.args[0], Ref):
            return Fresh.UNKNOWN, ""
        v = op.args[0].name
    return Fresh.UNKNOWN, ""


def owns_result(v: str, ops: Mapping[str, Op], child: ChildLookup | None,
                helpers: Mapping[str, Helper] | None = None) -> bool:
    """True when the value ``v`` is a tensor this forward made and no one else holds."""
    return value_fresh(v, ops, child, helpers) is Fresh.NEW


def _op_fresh(op: Op, child: ChildLookup | None, helpers: Mapping[str, Helper] | None, depth: int) -> Fresh:
    target = op.target
    if isinstance(target, PrimCall):
        return node_fresh(target.prim, None, helpers, depth + 1)
    if isinstance(target, ChildCall):
        node = child(target.path) if child is not None else None
        return Fresh.UNKNOWN if node is None else node_fresh(node, None, helpers, depth + 1)
    if isinstance(target, FunctionCall):
        name = helper_name(target.qualname)
        helper = None if name is None else (helpers or {}).get(name)
        if helper is not None:
            return Fresh.PASS if helper_passes(helper) else Fresh.UNKNOWN
    found = kind_of(op)
    if found is not None and not op.kwargs and TRAITS[found.kind].shape in ("broadcast", "join"):
        return Fresh.PASS if found.in_place else Fresh.NEW  # ``out += x`` returns ``out`` itself
    return Fresh.UNKNOWN


def node_fresh(node: Node, child: ChildLookup | None = None, helpers: Mapping[str, Helper] | None = None,
               depth: int = 0) -> Fresh:
    """What ``node`` returns relative to its input (``child`` resolves ChildRefs in a Block body)."""
    if depth > _MAX_DEPTH:
        return Fresh.UNKNOWN
    if isinstance(node, NEW_TENSOR) or (isinstance(node, Activation) and not node.inplace):
        return Fresh.NEW
    if isinstance(node, PASSTHROUGH) or isinstance(node, Activation):
        return Fresh.PASS
    if isinstance(node, Chain):
        out = Fresh.PASS
        for item in node.items:
            out = out.then(node_fresh(item, child, helpers, depth + 1))
        return out
    if isinstance(node, SkipConnection | Parallel) and node.combine.in_place:  # the first value, written into
        target = node.body if isinstance(node, SkipConnection) else node.branches[0]
        return Fresh.NEW if node_fresh(target, child, helpers, depth + 1) is Fresh.NEW else Fresh.UNKNOWN
    if isinstance(node, SkipConnection | Parallel):
        return Fresh.NEW  # any other join makes a new tensor (``a + b``, ``torch.cat``)
    if isinstance(node, ChildRef):
        found = child(node.path) if child is not None else None
        return Fresh.UNKNOWN if found is None else node_fresh(found, None, helpers, depth + 1)
    if isinstance(node, Block):
        return _block_fresh(node, helpers, depth)
    return Fresh.UNKNOWN


def _block_fresh(block: Block, helpers: Mapping[str, Helper] | None, depth: int) -> Fresh:
    lookup = functools.partial(node_at, block)
    out = _body_fresh(block.body, lookup, helpers, depth)
    if block.train_body is not None:
        out = out.both(_body_fresh(block.train_body, lookup, helpers, depth))
    return out


def _body_fresh(body: Node, lookup: ChildLookup, helpers: Mapping[str, Helper] | None, depth: int) -> Fresh:
    if not isinstance(body, Graph):
        return node_fresh(body, lookup, helpers, depth + 1)
    if not body.inputs or not isinstance(body.output, Ref):
        return Fresh.UNKNOWN
    out, source = _traced_back(body.output.name, {op.name: op for op in body.ops}, lookup, helpers, depth + 1)
    if out is Fresh.PASS and source != body.inputs[0].name:
        return Fresh.UNKNOWN  # passes through some input other than the first
    return out


@functools.lru_cache(maxsize=256)
def _source_passes(source: str) -> bool:
    """True when the function in ``source`` returns its first parameter unchanged or a new tensor on every
    path: each ``return`` is that parameter (never rebound) or arithmetic (``input * noise``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    positional = [*defs[0].args.posonlyargs, *defs[0].args.args] if len(defs) == 1 else []
    if not positional:
        return False
    fn, first = defs[0], positional[0].arg
    inner = list(ast.walk(fn))[1:]
    if any(isinstance(n, _OPAQUE) for n in inner) or any(_rebinds(n, first) for n in inner):
        return False
    returns = [n for n in inner if isinstance(n, ast.Return)]
    if not returns or _falls_off(fn.body):
        return False
    return all(r.value is not None and _fresh_or_first(r.value, first) for r in returns)


_OPAQUE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Yield, ast.YieldFrom, ast.Global, ast.Nonlocal,
           ast.ClassDef, ast.Match, ast.Try, ast.Import, ast.ImportFrom, ast.With, ast.AsyncWith)
"""Code the check does not read into: a helper containing any of these is not trusted to pass through."""
_REPOINT = frozenset({"data", "set_", "resize_", "untyped_storage", "storage", "__setattr__"})
"""Attributes that make a tensor share storage with something else, or replace its data."""


def _rebinds(node: ast.AST, first: str) -> bool:
    """True when ``node`` rebinds ``first`` (``first = ...``, ``for first in``, ``del first``) or re-points
    its data (``first.data = ...``, ``first.set_(...)``)."""
    if isinstance(node, ast.Name):
        return node.id == first and not isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == first:
        return not isinstance(node.ctx, ast.Load) or node.attr in _REPOINT
    return False


def _fresh_or_first(expr: ast.expr, first: str) -> bool:
    if isinstance(expr, ast.Name):
        return expr.id == first
    return isinstance(expr, ast.BinOp)  # tensor arithmetic makes a new tensor


def _falls_off(body: list[ast.stmt]) -> bool:
    """True when the block can end without ``return``/``raise`` (then it returns None)."""
    if not body:
        return True
    last = body[-1]
    if isinstance(last, ast.Return | ast.Raise):
        return False
    if isinstance(last, ast.If):
        return _falls_off(last.body) or _falls_off(last.orelse)
    return True


def helper_passes(helper: Helper) -> bool:
    """True when a copied FUNCTION helper returns its first argument itself or a new tensor (``PASS``)."""
    return helper.kind is HelperKind.FUNCTION and _source_passes(helper.source)

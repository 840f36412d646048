"""One trace for instances that differ only in values passed straight to a ``torch.fx.wrap``-ed function.

torchvision's ``StochasticDepth.forward`` is ``return stochastic_depth(input, self.p, self.mode,
self.training)``, and each block of a network has its own ``p``; swin's window attentions differ in
``num_heads`` and ``shift_size``, passed the same way to ``shifted_window_attention``. fx records a
call of a wrapped function with its arguments as they are, without running it: such a value lands
in the graph as one argument of one node and nowhere else. So the trace of one instance, with that
argument replaced by another instance's value (converted as ``to_graph`` converts it), is exactly
the other instance's trace (``frontends.trace_reuse`` keys such reads by kind, not value).

``passed_attrs(forward)`` finds, in the forward's source, each ``self.a`` read only as a direct
argument of calls ``f(..., self.a, ...)`` of a plain name, in a forward without loops,
comprehensions, lambdas or nested functions (each such call runs at most once). After the trace,
``template`` keeps it for reuse only when each such call was recorded by fx's wrapper straight from
the forward, at that call's place in the code (``torchgraft_at``, set by the tracer), with the value
read as that argument; else the trace is shared only with instances whose values are equal.

>>> passable(0.1), passable([3, 3]), passable(torch.ones(1))
(True, True, False)
"""

from __future__ import annotations

import ast
import functools
import linecache
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any

import torch  # noqa: F401 - the doctest's
import torch.fx as fx
from torch import nn
from torch.fx.immutable_collections import immutable_list

from torchgraft.frontends.fx_block import to_arg
from torchgraft.frontends.state import method_tree
from torchgraft.ir.graph import Graph, Op
from torchgraft.ir.opkinds import activation_of
from torchgraft.ir.values import Arg

Span = tuple[int, int, int, int]
"""(line, end line, column, end column) of a call in its file, as the bytecode's positions give it."""
Site = tuple[Span, int | str]
"""Where a value is passed: the call's span, and its position there (an index or a keyword)."""

_REPEATS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
            ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Yield, ast.YieldFrom, ast.Await)
_SCALARS = (int, float, str, bool)


def passable(value: Any) -> bool:
    """Whether ``value`` is one fx passes on as is (a number, string, bool; a short list/tuple of them)."""
    if type(value) in _SCALARS:
        return True
    return type(value) in (list, tuple) and len(value) <= 64 and all(type(v) in _SCALARS for v in value)


@functools.lru_cache(maxsize=1024)
def passed_attrs(forward: Any) -> tuple[tuple[str, tuple[Site, ...]], ...]:
    """(attribute, the sites where the forward passes ``self.<attribute>``) for each attribute the forward
    reads only as a direct argument of a call of a plain name; () when the source cannot say (cached)."""
    code = getattr(forward, "__code__", None)
    tree = method_tree(forward) if code is not None else None
    fdef = tree.body[0] if isinstance(tree, ast.Module) and tree.body else None
    if code is None or not isinstance(fdef, ast.FunctionDef) or any(isinstance(n, _REPEATS) for n in ast.walk(fdef)
                                                                    if n is not fdef):
        return ()
    first = linecache.getline(code.co_filename, code.co_firstlineno)
    indent, shift = len(first) - len(first.lstrip()), code.co_firstlineno - 1
    parents = {id(c): n for n in ast.walk(fdef) for c in ast.iter_child_nodes(n)}
    sites: dict[str, list[Site]] = {}
    refused = {"training"}  # a probe or a fixed mode: never a value
    for node in ast.walk(fdef):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            parent = parents.get(id(node))
            if isinstance(parent, ast.keyword):  # f(x, p=self.p): the keyword's call
                parent = parents.get(id(parent))
            site = _site(node, parent, shift, indent)
            if site is None:
                refused.add(node.attr)
            else:
                sites.setdefault(node.attr, []).append(site)
    return tuple((a, tuple(s)) for a, s in sites.items() if a not in refused)


def _site(node: ast.Attribute, call: ast.AST | None, shift: int, indent: int) -> Site | None:
    if not isinstance(node.ctx, ast.Load) or not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        return None
    span = (call.lineno + shift, (call.end_lineno or call.lineno) + shift, call.col_offset + indent,
            (call.end_col_offset or 0) + indent)
    for i, a in enumerate(call.args):
        if isinstance(a, ast.Starred):
            return None  # positions after it depend on the values unpacked
        if a is node:
            return span, i
    return next(((span, k.arg) for k in call.keywords if k.value is node and k.arg is not None), None)


def same(a: Any, b: Any) -> bool:
    """Exactly equal values of ``passable`` kinds (types too: 1 and 1.0 and True apart; -0.0 and 0.0 apart)."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a.hex() == b.hex() if type(a) is float else bool(a == b)


@dataclass(frozen=True, slots=True)
class Template:
    """A traced Graph and where each passed attribute's value sits in it: (op index, position, attribute)."""

    body: Graph
    slots: tuple[tuple[int, int | str, str], ...]


def template(graph: fx.Graph, body: Graph, forward: Any, values: dict[str, Any]) -> Template | None:
    """A ``Template`` of ``body``, converted from the trace ``graph`` of an instance whose passed attributes
    held ``values``; None when some site was not recorded from the forward once, holding that value, as an
    argument of an op whose conversion does not depend on it (``canonical_target`` rewrites activations)."""
    sites = dict(passed_attrs(forward))
    positions = list(forward.__code__.co_positions())
    at: dict[Any, list[fx.Node]] = {}
    for node in graph.nodes:
        offset = node.meta.get("torchgraft_at")
        if offset is not None and node.op == "call_function":
            at.setdefault(positions[offset // 2][:4], []).append(node)
    index = {op.name: i for i, op in enumerate(body.ops)}
    slots = []
    for attr, value in values.items():
        for span, pos in sites.get(attr, ()):
            nodes = at.get(span, [])
            if len(nodes) != 1 or nodes[0].name not in index:
                return None
            i = index[nodes[0].name]
            if activation_of(body.ops[i].target) is not None or not _held(nodes[0], pos) or \
                    not same(_list(_raw(nodes[0], pos)), value) or _ir_arg(body.ops[i], pos) != to_arg(value):
                return None
            slots.append((i, pos, attr))
    return Template(body, tuple(slots)) if slots else None


def _raw(node: fx.Node, pos: int | str) -> Any:
    return node.args[pos] if isinstance(pos, int) else node.kwargs[pos]


def _held(node: fx.Node, pos: int | str) -> bool:
    """Whether the node has an argument at ``pos``."""
    return pos < len(node.args) if isinstance(pos, int) else pos in node.kwargs


def _list(value: Any) -> Any:
    return list(value) if type(value) is immutable_list else value  # how fx holds a list argument


def _ir_arg(op: Op, pos: int | str) -> Arg | None:
    if isinstance(pos, int):
        return op.args[pos] if pos < len(op.args) else None
    return dict(op.kwargs).get(pos)


def instantiate(t: Template, values: dict[str, Any]) -> Graph:
    """The template's Graph with each passed attribute's value from ``values`` in its place."""
    ops = list(t.body.ops)
    for i, pos, attr in t.slots:
        op, arg = ops[i], to_arg(values[attr])
        if isinstance(pos, int):
            ops[i] = replace(op, args=(*op.args[:pos], arg, *op.args[pos + 1:]))
        else:
            ops[i] = replace(op, kwargs=tuple((k, arg if k == pos else v) for k, v in op.kwargs))
    return Graph(t.body.inputs, tuple(ops), t.body.output)


def unaliased(model: nn.Module) -> bool:
    """Whether no module, parameter or buffer object sits at two places in ``model``'s tree (then each one's
    first name, which fx names it by, is the path it was reached by)."""
    seen: set[int] = set()
    todo = [model]
    while todo:
        mod = todo.pop()
        held = [t for t in (*mod._parameters.values(), *mod._buffers.values()) if t is not None]
        before = len(seen)
        seen.add(id(mod))
        seen.update(map(id, held))
        if len(seen) != before + 1 + len(held):
            return False  # met before (a module in a cycle too)
        todo += [c for c in mod._modules.values() if c is not None]
    return True


def values_key(values: dict[str, Any]) -> Hashable:
    """A hashable form of passed values, equal exactly when ``same`` says so."""
    def one(v: Any) -> Hashable:
        if type(v) in (list, tuple):
            return (type(v), tuple(one(x) for x in v))
        return (type(v), v.hex() if type(v) is float else v)
    return tuple(sorted((k, one(v)) for k, v in values.items()))


__all__ = ["Site", "Span", "Template", "instantiate", "passable", "passed_attrs", "same", "template", "unaliased",
           "values_key"]

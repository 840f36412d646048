"""Combinator bodies (Chain/Parallel/SkipConnection over child refs and inline activations) as Graphs.

The one lowering of a structural Block body: the emitter writes every forward from a Graph, and any
consumer that needs dataflow (fx export, pictures, the interpreter) lowers a structural body here.
Each value is named after the child that made it (``conv1 = self.conv1(x)``); the input takes the
Block's parameter name (``Block.input_name``; ``x`` when lowered without a Block).

>>> lower_body(Chain(ChildRef("conv"), Activation.of(ActKind.RELU)))   # doctest: +SKIP
Graph(inputs=(Input('x'),), ops=(Op('conv', ChildCall('conv'), (Ref('x'),)), Op('relu', ...)), output=Ref('relu'))
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any

from torchgraft.errors import IRError
from torchgraft.ir.combine import Combine, combine_ops, skip_operands
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, Op, PrimCall
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, Parallel, SkipConnection
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.traverse import join
from torchgraft.ir.types import UNKNOWN, TensorType, ValueType
from torchgraft.ir.values import Const, Ref, Seq

LOWERED_INPUT = "x"
"""The name of a lowered body's one input (``forward(self, x)``)."""


class _Lowering:
    def __init__(self, name: str = LOWERED_INPUT) -> None:
        self.ops: list[Op] = []
        self.count: dict[str, int] = {name: 1}
        self.leaves: list[tuple[str, Node]] = []
        self.taken: set[str] = {name}

    def fresh(self, base: str) -> str:
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in base) or "v"
        base = f"v{base}" if base[0].isdigit() else f"{base}_" if keyword.iskeyword(base) else base
        while True:  # relu, relu_1, ...; never a name already given (a child may be called relu_1 itself)
            n = self.count.get(base, 0)
            self.count[base] = n + 1
            name = base if n == 0 else f"{base}_{n}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def emit(self, base: str, target: ChildCall | FunctionCall | PrimCall, *args: Ref | Seq | Const) -> str:
        name = self.fresh(base)
        self.ops.append(Op(name, target, tuple(args)))
        return name

    def leaf(self, node: Node, name: str) -> str:
        self.leaves.append((name, node))
        return name

    def combine(self, how: Combine, values: list[str]) -> str:
        ops, out = combine_ops(how, values, self.fresh)
        self.ops += ops
        return out

    def lower(self, node: Node, x: str) -> str:
        if isinstance(node, ChildRef):
            return self.leaf(node, self.emit(node.path, ChildCall(node.path), Ref(x)))
        if isinstance(node, Primitive) and not node.state():
            return self.leaf(node, self.emit(_prim_base(node), PrimCall(node), Ref(x)))
        if isinstance(node, Chain):
            for item in node.items:
                x = self.lower(item, x)
            return x
        if isinstance(node, SkipConnection):
            y = self.lower(node.body, x)  # body(x) + x, as a residual is usually written (add/mul: the same value)
            return self.combine(node.combine, skip_operands(node.combine, x, y))
        if isinstance(node, Parallel):
            vals = [self.lower(b, x) for b in node.branches]
            return self.combine(node.combine, vals)
        if isinstance(node, Graph) and len(node.inputs) == 1 and isinstance(node.output, Ref):
            return self.leaf(node, self.inline(node, x))
        raise IRError(f"{type(node).__name__} cannot appear inside a Block body; "
                      "use ChildRef for stateful children (inline: stateless primitives and one-input Graphs)")

    def inline(self, g: Graph, x: str) -> str:
        """A one-input Graph leaf's ops, renamed fresh, reading ``x`` for its input."""
        names = {g.inputs[0].name: x}
        for op in g.ops:
            new = self.fresh(op.source_var or op.name)
            args = tuple(_renamed(a, names) for a in op.args)
            kwargs = tuple((k, _renamed(a, names)) for k, a in op.kwargs)
            self.ops.append(replace(op, name=new, args=args, kwargs=kwargs))
            names[op.name] = new
        assert isinstance(g.output, Ref)
        return names[g.output.name]


def _prim_base(prim: Primitive) -> str:
    return prim.kind.functional if isinstance(prim, Activation) else type(prim).__name__.lower()


def leaf_sites(body: Node) -> list[tuple[str, Node]]:
    """The leaves of a structural body (children called, inline primitives, Graph leaves) in the order they
    run, each with the value name its lowering gives it (``relu``, ``relu_1``): the site a pass reports."""
    lw = _Lowering()
    lw.lower(body, LOWERED_INPUT)
    return lw.leaves


def map_leaves(body: Node, fn: Callable[[str, Node], Node], names: Sequence[str] | None = None) -> Node:
    """``body`` with each leaf replaced by ``fn(name, leaf)`` (names as in ``leaf_sites``, or ``names`` when
    given: ``leaf_sites``'s names of an equal body); the same object when nothing changed.
    ``map_leaves(body, lambda n, leaf: ReLU() if leaf == GELU() else leaf)``."""
    order = iter([n for n, _ in leaf_sites(body)] if names is None else names)
    return _map_leaves(body, fn, order)


def _map_leaves(node: Node, fn: Callable[[str, Node], Node], order: Iterator[str]) -> Node:
    """``map_leaves``'s walk: a module-level function, not a closure that refers to itself (each such closure
    is a reference cycle only the cyclic collector frees: 4,000 of them cost a pass at 4,000 blocks)."""
    if isinstance(node, Chain):
        items = tuple(_map_leaves(i, fn, order) for i in node.items)
        return node if items == node.items else Chain(*items, names=node.names, cls=node.cls)
    if isinstance(node, SkipConnection):
        inner = _map_leaves(node.body, fn, order)
        return node if inner is node.body else replace(node, body=inner)
    if isinstance(node, Parallel):
        branches = tuple(_map_leaves(b, fn, order) for b in node.branches)
        return node if branches == node.branches else replace(node, branches=branches)
    return fn(next(order), node)


def map_chains(body: Node, fn: Callable[[tuple[Node, ...]], list[Node]]) -> Node:
    """``body`` with each Chain's items replaced by ``fn(items)`` (inner Chains first); a Chain left with one item
    becomes that item. The same object when nothing changed."""
    if isinstance(body, Chain):
        inner = tuple(map_chains(i, fn) for i in body.items)
        items = fn(inner)
        if tuple(items) == body.items:
            return body
        return items[0] if len(items) == 1 else Chain(*items)
    if isinstance(body, SkipConnection):
        new = map_chains(body.body, fn)
        return body if new is body.body else replace(body, body=new)
    if isinstance(body, Parallel):
        branches = tuple(map_chains(b, fn) for b in body.branches)
        return body if branches == body.branches else replace(body, branches=branches)
    return body


def _renamed(a: Any, names: dict[str, str]) -> Any:
    """``a`` with the values it reads renamed (any argument kind, nested)."""
    if isinstance(a, Ref):
        return Ref(names.get(a.name, a.name))
    if isinstance(a, tuple):
        return tuple(_renamed(i, names) for i in a)
    if is_dataclass(a) and not isinstance(a, type) and not isinstance(a, Const):
        return replace(a, **{f.name: _renamed(getattr(a, f.name), names) for f in fields(a)})
    return a


def lower_body(body: Node, io_type: ValueType = UNKNOWN, name: str = LOWERED_INPUT) -> Graph:
    """The Graph equivalent of a combinator body with one input called ``name`` (a Graph body comes back as it
    is; a Block's is ``Block.input_name``: ``block_graph``). ``io_type``: the type of its input and of its
    result, when known (else left unknown)."""
    if isinstance(body, Graph):
        return body
    lw = _Lowering(name)
    out = lw.lower(body, name)
    ops = [replace(op, type=io_type) if op.name == out else op for op in lw.ops]
    return Graph((Input(name, io_type),), tuple(ops), Ref(out))


def block_graph(block: Block, body: Node | None = None) -> Graph:
    """``body`` (default: ``block.body``) as a Graph: a structural body lowered with the block's own input name
    (``Block.input_name``), typed ``x: Tensor -> Tensor`` when capture stored it (``CAPTURED_IO``), untyped when
    it was built by hand; a Graph as it is."""
    body = block.body if body is None else body
    return lower_body(body, CAPTURED_IO if block.method in CAPTURED_METHODS else UNKNOWN, block.input_name)


CAPTURED_IO = TensorType(())
"""The input and result type a captured structural body is lowered with: capture stores structure only for a
forward from one tensor to one tensor (``ir.stored``), so both are tensors; the shape is not kept (only the kind,
``Tensor``, is read: the emitter's annotations)."""


CAPTURED_METHODS = ("fx", "trace")
"""``Block.method`` of a forward capture traced (``ir.stored`` stores structure for these)."""


def typed_lowering(block: Block, path: str, type_at: Callable[[str], ValueType]) -> Graph:
    """``block``'s structural body lowered, each value typed where the types that are known fix it exactly:
    a child's call has the child's output type (``type_at(path of the child)``), the result has the block's
    (``type_at(path)``), an inline activation keeps its input's type (either way), and a join of values of one
    type has that type. ``typed_lowering(block, "layer1.0", model.type_at)``."""
    g = lower_body(block.body, name=block.input_name)
    types: dict[str, ValueType] = {}
    for op in g.ops:
        if isinstance(op.target, ChildCall):
            types[op.name] = type_at(join(path, op.target.path))
    if isinstance(g.output, Ref):
        types[g.output.name] = type_at(path)
    types = {k: t for k, t in types.items() if t != UNKNOWN}
    changed = True
    while changed:
        changed = False
        for op in g.ops:
            reads = op.reads()
            if isinstance(op.target, PrimCall) and isinstance(op.target.prim, Activation) and len(reads) == 1:
                for a, b in ((reads[0], op.name), (op.name, reads[0])):
                    if a in types and b not in types:
                        types[b], changed = types[a], True
            elif isinstance(op.target, FunctionCall) and op.name not in types and reads:
                known = {types.get(r) for r in reads}
                if len(known) == 1 and None not in known and op.target.qualname in _SAME_TYPE_JOINS:
                    types[op.name], changed = known.pop(), True  # type: ignore[assignment]
    ops = tuple(replace(op, type=types.get(op.name, op.type)) for op in g.ops)
    return Graph(tuple(replace(i, type=types.get(i.name, i.type)) for i in g.inputs), ops, g.output)


_SAME_TYPE_JOINS = frozenset({"operator.add", "operator.sub", "operator.mul", "torch.maximum", "torch.minimum"})
"""Joins whose result has the type of its arguments when they all have one type (no broadcasting, no promotion)."""


def is_structural(body: Node | None) -> bool:
    """True when ``body`` is a combinator body (a Block forward written as structure, not a Graph)."""
    return isinstance(body, (Chain, Parallel, SkipConnection, ChildRef, Primitive))

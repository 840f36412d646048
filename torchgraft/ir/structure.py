"""Recognise combinator structure in a Block's dataflow graph.

A Graph whose ops form single-input runs, residual adds and fan-out/join patterns is
described as ``Chain``/``SkipConnection``/``Parallel`` over its ops::

    relu(bn2(conv2(relu(bn1(conv1(x))))) + x)
    == Chain(SkipConnection(Chain(conv1, bn1, relu, conv2, bn2), add), relu)

The Graph stays the block's executable body; this is the structural view used by the
printer and by pattern matching. Graphs that do not fit come back unchanged.
"""

from __future__ import annotations

from collections import Counter

from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, Op, PrimCall
from torchgraft.ir.nodes import Chain, ChildRef, Combine, CombineKind, Node, Parallel, SkipConnection
from torchgraft.ir.values import Const, Ref, Seq

_COMBINE = {"operator.add": CombineKind.ADD, "torch.add": CombineKind.ADD,
            "operator.mul": CombineKind.MUL, "torch.mul": CombineKind.MUL}
_IDENTITY = Chain()


class _Misfit(Exception):
    pass


def _leaf(op: Op) -> Node:
    if isinstance(op.target, ChildCall):
        return ChildRef(op.target.path)
    if isinstance(op.target, PrimCall):
        return op.target.prim
    return Graph(tuple(Input(r) for r in dict.fromkeys(op.reads())), (op,), Ref(op.name))


def _unary_input(op: Op) -> str | None:
    refs = op.reads()
    if len(refs) == 1 and isinstance(op.args[0], Ref) if op.args else False:
        return refs[0]
    return None


def _combine_inputs(op: Op) -> tuple[Combine, list[str]] | None:
    t = op.target
    if isinstance(t, FunctionCall) and t.qualname in _COMBINE and len(op.args) == 2 and not op.kwargs:
        if all(isinstance(a, Ref) for a in op.args):
            return Combine(_COMBINE[t.qualname]), [a.name for a in op.args]  # type: ignore[union-attr]
    if isinstance(t, FunctionCall) and t.qualname == "torch.cat" and op.args and isinstance(op.args[0], Seq):
        items = op.args[0].items
        dim_arg = op.args[1] if len(op.args) > 1 else dict(op.kwargs).get("dim", Const(0))
        if all(isinstance(i, Ref) for i in items) and isinstance(dim_arg, Const) and isinstance(dim_arg.value, int):
            return Combine(CombineKind.CONCAT, dim_arg.value), [i.name for i in items]  # type: ignore[union-attr]
    return None


def _then(first: Node, nxt: Node) -> Node:
    items = list(first.items) if isinstance(first, Chain) else [first]
    items += list(nxt.items) if isinstance(nxt, Chain) else [nxt]
    return items[0] if len(items) == 1 else Chain(*items)


class _Recognizer:
    def __init__(self, g: Graph) -> None:
        self.ops = {op.name: op for op in g.ops}
        self.used: Counter[str] = Counter()

    def rec(self, v: str) -> tuple[str, Node]:
        """(source value, node mapping source -> v)."""
        op = self.ops.get(v)
        if op is None:
            return v, _IDENTITY
        self.used[v] += 1
        comb = _combine_inputs(op)
        if comb is not None:
            combine, ins = comb
            parts = [self.rec(i) for i in ins]
            sources = {s for s, _ in parts}
            if len(sources) != 1:
                raise _Misfit
            src = sources.pop()
            bodies = [n for _, n in parts]
            if len(bodies) == 2 and _IDENTITY in bodies and combine.kind is not CombineKind.CONCAT:
                other = bodies[1 - bodies.index(_IDENTITY)]
                return src, SkipConnection(other, combine)
            if any(b == _IDENTITY for b in bodies):
                raise _Misfit
            flat: list[Node] = []
            for b in bodies:  # (a + b) + c reads as one three-way Parallel
                same = isinstance(b, Parallel) and b.combine == combine and combine.kind is not CombineKind.CONCAT
                flat.extend(b.branches if same else (b,))  # type: ignore[union-attr]
            return src, Parallel(tuple(flat), combine)
        inp = _unary_input(op)
        if inp is None:
            raise _Misfit
        src, node = self.rec(inp)
        if inp in self.ops and self._fans_out(inp):
            raise _Misfit
        return src, _then(node, _leaf(op))

    def _fans_out(self, v: str) -> bool:
        return self.used[v] > 1


def recognize(g: Graph) -> Node:
    """The combinator form of ``g`` when it has one input and fits; otherwise ``g`` itself."""
    if len(g.inputs) != 1 or not isinstance(g.output, Ref):
        return g
    r = _Recognizer(g)
    try:
        src, node = r.rec(g.output.name)
    except _Misfit:
        return g
    all_used = all(r.used[name] >= 1 for name in r.ops)
    shared = [name for name, n in r.used.items() if n > 1]
    if src != g.inputs[0].name or not all_used or shared or node == _IDENTITY:
        return g
    return node

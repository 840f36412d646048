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
from collections.abc import Mapping

from torchgraft.ir.aliasing import ChildLookup, owns_result
from torchgraft.ir.combine import IN_PLACE_FUNCTIONS, Combine, CombineKind
from torchgraft.ir.graph import ChildCall, Graph, Input, Op, PrimCall
from torchgraft.ir.model import Helper
from torchgraft.ir.nodes import Chain, ChildRef, Node, Parallel, SkipConnection
from torchgraft.ir.opkinds import TRAITS, kind_of
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.values import Const, Ref, Seq

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


def _combine_inputs(op: Op, fresh: dict[str, Op], child: ChildLookup | None = None,
                    helpers: Mapping[str, Helper] | None = None) -> tuple[Combine, list[str]] | None:
    found = kind_of(op)
    if found is None or not TRAITS[found.kind].combine:
        return None
    kind = CombineKind(TRAITS[found.kind].combine)
    if not kind.takes_dim and len(op.args) == 2 and not op.kwargs and all(isinstance(a, Ref) for a in op.args):
        # a + b, torch.maximum(a, b), a - b (its order kept); ``out += x`` joins like ``out + x`` when ``out``
        # is a tensor this forward made and holds alone (not its input, nor what a layer may pass through
        # from it: ``h = self.drop(x); h -= ...`` writes into the caller's x)
        if not found.in_place:
            return Combine(kind), [a.name for a in op.args]  # type: ignore[union-attr]
        if kind in IN_PLACE_FUNCTIONS and owns_result(op.args[0].name, fresh, child, helpers):  # type: ignore[union-attr]
            return Combine(kind, in_place=True), [a.name for a in op.args]  # type: ignore[union-attr]
        return None
    if kind.takes_dim and not found.in_place and op.args and isinstance(op.args[0], Seq) and len(op.args) <= 2:
        items = op.args[0].items
        dim_arg = op.args[1] if len(op.args) > 1 else dict(op.kwargs).get("dim", Const(0))
        if (all(isinstance(i, Ref) for i in items) and isinstance(dim_arg, Const) and isinstance(dim_arg.value, int)
                and set(dict(op.kwargs)) <= {"dim"} and not isinstance(dim_arg.value, bool)):
            return Combine(kind, dim_arg.value), [i.name for i in items]  # type: ignore[union-attr]
    return None


def _flat(node: Node) -> tuple[Node, ...]:
    """A Chain's items, or the node alone: what ``Chain(a, b)`` of parts flattens them to."""
    return node.items if isinstance(node, Chain) else (node,)


_NEVER = 1 << 62
"""The ``first`` of a derivation that runs no op (the identity)."""


class _Recognizer:
    """Reads the graph backwards from its output. Each derivation also gives ``first``, the index of
    the first op it runs, so branches keep the order their calls ran in: a structure never runs
    children in another order than the forward did (dropout draws, in-place writes)."""

    def __init__(self, g: Graph, child: ChildLookup | None = None,
                 helpers: Mapping[str, Helper] | None = None) -> None:
        self.child = child
        self.helpers = helpers
        self.ops = {op.name: op for op in g.ops}
        self.index = {op.name: i for i, op in enumerate(g.ops)}
        self.used: Counter[str] = Counter()
        self.by_index = {i: op for i, op in enumerate(g.ops)}
        self.branch_firsts: dict[int, list[tuple[Node, int, frozenset[int]]]] = {}  # a Parallel built here -> its
        # branches, each with the index of its first op and the indices of its ops

    def rec(self, v: str) -> tuple[str, Node, int]:
        """(source value, node mapping source -> v, index of the first op that node runs).

        A run of single-input ops is walked back in one loop and made one Chain (not one Chain per op);
        each op's input is checked not to fan out once the run's start is derived, as a recursion would."""
        run: list[Op] = []  # the single-input ops from v back to where the run starts
        node: Node
        while True:
            op = self.ops.get(v)
            if op is None:
                src, node, first = v, _IDENTITY, _NEVER
                break
            self.used[v] += 1
            comb = _combine_inputs(op, self.ops, self.child, self.helpers)
            if comb is not None:
                src, node, first = self._combined(*comb)
                break
            inp = _unary_input(op)
            if inp is None:
                raise _Misfit
            run.append(op)
            v = inp
        for op in reversed(run):  # deepest first: the order the recursion's checks ran in
            inp = _unary_input(op)
            if inp in self.ops and self._fans_out(inp):  # type: ignore[operator]
                raise _Misfit
            first = min(first, self.index[op.name])
        if not run:
            return src, node, first
        items = [*_flat(node), *(part for op in reversed(run) for part in _flat(_leaf(op)))]
        return src, items[0] if len(items) == 1 else Chain(*items), first

    def _combined(self, combine: Combine, ins: list[str]) -> tuple[str, Node, int]:
        parts = [self.rec(i) for i in ins]
        sources = {s for s, _, _ in parts}
        if len(sources) != 1:
            raise _Misfit
        src = sources.pop()
        spans = [self._span(i, src) for i in ins]
        kind = combine.kind
        assert isinstance(kind, CombineKind)
        bodies = [n for _, n, _ in parts]
        first = min(f for _, _, f in parts)
        if combine.in_place and bodies[0] == _IDENTITY:
            raise _Misfit  # writes into the input (owns_result refuses it first)
        if len(bodies) == 2 and _IDENTITY in bodies and not kind.takes_dim and (bodies[0] == _IDENTITY
                                                                              or kind.commutative):
            return src, SkipConnection(bodies[1 - bodies.index(_IDENTITY)], combine), first
        if any(b == _IDENTITY for b in bodies):
            raise _Misfit
        flat: list[tuple[Node, int, frozenset[int]]] = []
        for i, (_, b, f) in enumerate(parts):  # (a + b) + c reads as one three-way Parallel (the fold is left first),
            # when that moves the inner join (a + b) after c's ops harmlessly: c writes nothing in place
            if (isinstance(b, Parallel) and b.combine == combine and not kind.takes_dim and i == 0
                    and all(self._pure(k) for span in spans[1:] for k in span)):
                flat.extend(self.branch_firsts.pop(id(b)))
            else:
                flat.append((b, f, spans[i]))
        ran = sorted(flat, key=lambda bf: bf[1])
        if ran != flat:
            if combine.in_place or not (len(flat) == 2 and kind.commutative):  # b + a == a + b exactly; longer
                # folds are not, and an in-place join writes into its first branch
                raise _Misfit
            flat = ran
        if not _one_after_another([span for _, _, span in flat]):
            raise _Misfit  # a = d1(x); b = d2(x); a = d3(a): branches run interleaved, a Parallel runs them in turn
        node = Parallel(tuple(b for b, _, _ in flat), combine)
        self.branch_firsts[id(node)] = flat
        return src, node, first

    def _span(self, v: str, src: str) -> frozenset[int]:
        """The indices of the ops that compute ``v`` from ``src`` (a branch's ops)."""
        out: set[int] = set()
        todo = [v]
        while todo:
            name = todo.pop()
            if name == src or name not in self.ops or self.index[name] in out:
                continue
            out.add(self.index[name])
            todo += self.ops[name].reads()
        return frozenset(out)

    def _pure(self, k: int) -> bool:
        """True when op number ``k`` writes nothing in place (a layer or function known not to)."""
        op = self.by_index[k]
        target = op.target
        layer = target.prim if isinstance(target, PrimCall) else (
            self.child(target.path) if isinstance(target, ChildCall) and self.child is not None else None)
        if isinstance(target, (PrimCall, ChildCall)):
            return isinstance(layer, Primitive) and not (isinstance(layer, Activation) and layer.inplace)
        found = kind_of(op)
        return found is not None and not found.in_place

    def _fans_out(self, v: str) -> bool:
        return self.used[v] > 1


def leaves(node: Node) -> list[Node]:
    """The leaves of a combinator tree in order (``Chain(a, SkipConnection(b))`` -> ``[a, b]``)."""
    if isinstance(node, Chain):
        return [p for i in node.items for p in leaves(i)]
    if isinstance(node, Parallel):
        return [p for b in node.branches for p in leaves(b)]
    if isinstance(node, SkipConnection):
        return leaves(node.body)
    return [node]


def _one_after_another(spans: list[frozenset[int]]) -> bool:
    """True when each span is one unbroken run of ops and each ends before the next begins."""
    last = -1
    for span in spans:
        if not span or min(span) <= last or max(span) - min(span) + 1 != len(span):
            return False
        last = max(span)
    return True


def recognize(g: Graph, child: ChildLookup | None = None, helpers: Mapping[str, Helper] | None = None) -> Node:
    """The combinator form of ``g`` when it has one input and fits; otherwise ``g`` itself. ``child`` gives the
    Block's child at a path: an in-place join (``out += x``) is structure only when ``out`` is a tensor the
    forward made (``out = self.bn2(...)``), which needs to know what the child returns (``ir.aliasing``;
    ``helpers``, the model's copied functions, tell whether one returns its input or a new tensor)."""
    if len(g.inputs) != 1 or not isinstance(g.output, Ref):
        return g
    r = _Recognizer(g, child, helpers)
    try:
        src, node, _ = r.rec(g.output.name)
    except _Misfit:
        return g
    all_used = all(r.used[name] >= 1 for name in r.ops)
    shared = [name for name, n in r.used.items() if n > 1]
    if src != g.inputs[0].name or not all_used or shared or node == _IDENTITY:
        return g
    return node

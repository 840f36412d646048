"""An ``expand`` that one outcome of a size comparison skips, where skipping it changes nothing.

transformers writes ``if batch_size != position_ids.shape[0]: position_ids = position_ids.expand(batch_size,
-1)`` ("the position ids are sometimes just unsqueezed, without being expanded"). Traced at batch 2, the
comparison holds and the graph expands; at batch 1 the forward skips the expand. The skipped expand is
``x.expand(n, -1, ..., -1)`` with ``n == x.size(0)``: when ``x`` has as many dims as sizes given, every size
is ``x``'s own and the expand is ``x`` itself, so the traced graph computes the other branch too.

``expand_sites`` finds such ops for a guard; ``rank_guarded`` rewrites the guard to accept the other outcome
when ``x`` has that many dims (``frontends.guard_relax`` checks, by tracing the other outcome, that the
graphs agree once the expand is taken out).

    if not batch != position_ids.size(0): raise ...   ->   if not (batch != position_ids.size(0)
                                                                  or position_ids.dim() == 2): raise ...
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torchgraft.frontends.guards import HOW
from torchgraft.ir.graph import FunctionCall, Graph, Guard, MethodCall, Op, renamed
from torchgraft.ir.opkinds import OpKind, is_kind, method_kind
from torchgraft.ir.ranks import listed_sizes
from torchgraft.ir.values import Arg, Const, Ref


@dataclass(frozen=True, slots=True)
class Absorb:
    """The op ``view`` = ``source.expand(n, -1, ...)`` (``rank`` sizes) that the other outcome skips."""

    view: str
    source: str
    rank: int


def _size_source(ops: dict[str, Op], arg: Arg) -> str | None:
    """``x`` when ``arg`` is ``x.size(0)``; None otherwise."""
    op = ops.get(arg.name) if isinstance(arg, Ref) else None
    if op is None or not is_kind(op, OpKind.SIZE) or op.kwargs or len(op.args) != 2 or op.args[1] != Const(0):
        return None
    return op.args[0].name if isinstance(op.args[0], Ref) else None


def _condition(ops: dict[str, Op], guard: Op) -> Op | None:
    """The comparison ``a != b`` the guard reads; None when it reads anything else."""
    cond = ops.get(guard.args[0].name) if guard.args and isinstance(guard.args[0], Ref) else None
    if cond is None or not is_kind(cond, OpKind.NE) or cond.kwargs or len(cond.args) != 2:
        return None
    return cond


def _same(ops: dict[str, Op], a: Arg, b: Arg) -> bool:
    """Whether two arguments are one value: equal, or reads of the same size (``x.shape[0]`` read twice)."""
    if a == b:
        return True
    x = ops.get(a.name) if isinstance(a, Ref) else None
    y = ops.get(b.name) if isinstance(b, Ref) else None
    return (x is not None and y is not None and is_kind(x, OpKind.SIZE) and x.target == y.target
            and x.args == y.args and x.kwargs == y.kwargs)


def expand_sites(g: Graph, guard: Op) -> list[Absorb]:
    """The ``x.expand(n, -1, ...)`` ops of ``g`` that are ``x`` itself when ``guard``'s condition
    ``n != x.size(0)`` fails (and ``x`` has as many dims as sizes given)."""
    ops = {op.name: op for op in g.ops}
    cond = _condition(ops, guard)
    if cond is None:
        return []
    found = []
    for op in g.ops:
        kind = method_kind(op.target.name) if isinstance(op.target, MethodCall) else None
        if kind is None or kind.kind is not OpKind.EXPAND or op.kwargs or not isinstance(op.args[0], Ref):
            continue
        source, sizes = op.args[0].name, listed_sizes(op)
        if not sizes or any(s != Const(-1) for s in sizes[1:]):
            continue
        a, b = cond.args
        if (_same(ops, sizes[0], a) and _size_source(ops, b) == source) or \
                (_same(ops, sizes[0], b) and _size_source(ops, a) == source):
            found.append(Absorb(op.name, source, len(sizes)))
    return found


def compared_tensor(g: Graph, guard: Op, side: int) -> str | None:
    """``x`` when ``guard``'s condition is ``n != x.size(0)`` with ``x.size(0)`` at ``side`` (0: left), or the
    only operand that reads a size 0 when the two were swapped (``2 != x.shape[0]``); None otherwise."""
    ops = {op.name: op for op in g.ops}
    cond = _condition(ops, guard)
    if cond is None:
        return None
    found = [_size_source(ops, a) for a in cond.args]
    if all(found):
        return found[side]
    return next((x for x in found if x is not None), None)


def without_view(g: Graph, absorb: Absorb) -> Graph:
    """``g`` with the expand taken out: its readers read its source."""
    return renamed(g, {absorb.view: absorb.source}, tuple(op for op in g.ops if op.name != absorb.view))


def rank_guarded(g: Graph, guard: Op, absorb: Absorb, where: str) -> Graph:
    """``g`` with ``guard`` also passing when ``absorb.source`` has ``absorb.rank`` dims (then the other
    outcome of its comparison computes the same)."""
    taken = {op.name for op in g.ops} | {i.name for i in g.inputs}
    dim, same, either = (_fresh(f"{guard.name}_{s}", taken) for s in ("dim", "rank", "or"))
    cond = guard.args[0]
    new = [Op(dim, MethodCall("dim"), (Ref(absorb.source),)),
           Op(same, FunctionCall("operator.eq"), (Ref(dim), Const(absorb.rank))),
           Op(either, FunctionCall("operator.or_"), (cond, Ref(same))),
           replace(guard, target=_message(guard.target, absorb, where), args=(Ref(either),))]
    ops: list[Op] = []
    for op in g.ops:
        ops += new if op.name == guard.name else [op]
    return Graph(g.inputs, tuple(ops), g.output)


def _message(guard: Guard | object, absorb: Absorb, where: str) -> Guard:
    assert isinstance(guard, Guard)
    site = guard.site.split("site-packages/", 1)[-1]
    msg = (f"{where} was captured where a size comparison (!=) at {site} was True; when it is False the model "
           f"skips an expand, which is the same only while that tensor has {absorb.rank} dims, and here it has "
           f"another number; {HOW}")
    return Guard(msg, guard.kind, guard.site)


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


__all__ = ["Absorb", "compared_tensor", "expand_sites", "rank_guarded", "without_view"]

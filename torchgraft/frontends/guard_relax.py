"""Dropping size guards that guard nothing: the other outcome of the comparison traces to the same graph.

A concrete trace guards every comparison of sizes it saw (``frontends.guards``), so an input for which the
comparison comes out the other way is refused. Many such comparisons decide nothing that reaches the graph:
``is_causal = q_len > 1 and mask is None`` is False for either outcome once a mask is given, yet a model
guarded on ``q_len > 1`` would refuse a one-token call. Each comparison is therefore traced once more with
its outcome flipped (the forward runs on, in Python, as if it had come out the other way): when that trace
records the very same graph, with every other guard the same, then every input that passes the other
guards computes that graph whichever way this comparison goes, and its guard is dropped.

A flipped trace that fails, or records any other op, constant or guard, keeps the guard. Only comparisons
the forward branched on are flipped: a size pinned because it left the symbolic world (``float(n)``) or
the trip count of an unrolled loop always keeps its guard.

>>> relax_guards(lambda flip: trace(flip)).ops   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union

from torchgraft.frontends.guard_expand import Absorb, compared_tensor, expand_sites, rank_guarded, without_view
from torchgraft.frontends.guard_source import skipped_expand
from torchgraft.ir.effects import pruned
from torchgraft.ir.graph import Graph, Guard, Op, renamed
from torchgraft.ir.ranks import static_rank
from torchgraft.ir.values import Ref


@dataclass(frozen=True, slots=True)
class Traced:
    """One concrete trace: its graph, and the indices (among its size guards, in order) of the comparisons
    the forward branched on (those that may be flipped)."""

    graph: Graph
    branches: tuple[int, ...]


Trace = Callable[[frozenset[int]], Traced]
"""Runs the trace with the comparisons at the given indices flipped."""


def _size_guards(g: Graph) -> list[Op]:
    return [op for op in g.ops if isinstance(op.target, Guard) and op.target.kind == "size"]


def _without(g: Graph, guards: list[Op]) -> Graph:
    """``g`` without ``guards`` and the comparisons only they read."""
    drop = {op.name for op in guards}
    users = g.users()
    for op in guards:
        for arg in op.args:
            if isinstance(arg, Ref) and set(users.get(arg.name, ())) <= drop:
                drop.add(arg.name)
    return Graph(g.inputs, tuple(op for op in g.ops if op.name not in drop), g.output)


def _canonical(g: Graph) -> Graph:
    """``g`` without pure ops nobody reads, its ops renamed by position: two traces that name values apart
    (``out_2``/``out_3``), or read a size one more time, but compute alike compare equal."""
    g = pruned(g)
    return renamed(g, {op.name: f"v{i}" for i, op in enumerate(g.ops)})


Choice = Union[Absorb, None]
"""How a dropped comparison's other outcome is the same graph: as it is (None), or without an expand."""


@dataclass
class _Flips:
    """The traces of one call with some comparisons flipped, each run once (None: it failed), at most
    ``budget`` of them."""

    trace: Trace
    budget: int
    runs: dict[frozenset[int], Traced | None] = field(default_factory=dict)

    def __call__(self, flip: frozenset[int]) -> Traced | None:
        if flip not in self.runs:
            self.budget -= 1
            try:
                self.runs[flip] = self.trace(flip)
            except Exception:  # the other branch does not run on this example: nothing to compare
                self.runs[flip] = None
        return self.runs[flip]


Plan = tuple[Traced, list[Op], dict[int, Choice]]
"""A trace, its size guards, and how each guard that is relaxed is (see ``Choice``)."""


def relax_guards(traces: Sequence[Trace], where: str = "", most: int = 3, budget: int = 24) -> Graph:
    """The graph of the first call's trace, with the size guards relaxed whose other outcome computes the same.

    A comparison is flipped (the forward runs on as if it had come out the other way) and traced again; a
    comparison that differs between the calls in ``traces`` (every call the module got, over all examples)
    is seen both ways on real data, and the calls' graphs merge when they differ only there. Guards are
    relaxed together only when every combination of their outcomes traces alike (``p = a > 1; q = b > 1;
    f if p or q else g`` is the same graph with either flipped, not with both): at most ``most`` flipped
    per forward, and at most ``budget`` extra traces per call. A comparison whose other outcome only skips
    an ``expand`` that is the identity there keeps a guard on the rank it needs (``frontends.guard_expand``).

    Before/after (``is_causal = q_len > 1 and mask is None`` with a mask given)::

        if not q_len > 1: raise ValueError(...)     ->   (no guard: both outcomes give is_causal=False)
    """
    runs = [_Flips(t, budget) for t in traces]
    runs[0].runs[frozenset()] = traces[0](frozenset())  # the first call's own failure is the caller's error
    for base in range(len(runs)):
        plan = _plan(runs, base, most)
        if plan is not None:
            return _relaxed(plan, where)
    plan = _plan(runs[:1], 0, most)  # the calls do not merge: the first alone (later calls are checked)
    assert plan is not None
    return _relaxed(plan, where)


def _plan(runs: list[_Flips], base: int, most: int) -> Plan | None:
    first = runs[base](frozenset())
    if first is None:
        return None
    guards = _size_guards(first.graph)
    chosen: dict[int, Choice] = {}
    merged: set[int] = set()
    for index in first.branches:
        if len(chosen) >= most or index >= len(guards) or runs[base].budget < 1 << len(chosen):
            break
        choice = _choose(runs[base], first, guards, chosen, index, frozenset({index}))
        if choice is not _NO:
            chosen[index] = choice  # type: ignore[assignment]
    for k, run in enumerate(runs):
        other = run(frozenset()) if k != base else first
        differ = _differing(first, other) if other is not None else None
        if k == base or differ == []:
            continue
        if differ is None or len(differ) != 1 or merged - set(differ):
            return None  # one comparison may come out apart between calls: pairs of them are never both seen
        choice = _choose(run, first, guards, {i: c for i, c in chosen.items() if i != differ[0]}, differ[0],
                         frozenset(differ), natural=True)
        if choice is _NO:
            return None
        chosen[differ[0]] = choice  # type: ignore[assignment]
        merged.add(differ[0])
    for index in first.branches:  # what neither flips nor examples showed, the source may
        if index < len(guards) and index not in chosen:
            read = _from_source(first.graph, guards[index])
            if read is not None:
                chosen[index] = read
    return first, guards, chosen


def _from_source(g: Graph, guard: Op) -> Absorb | None:
    """The expand the other outcome skips, read from the guarded ``if`` in the source (``guard_source``)."""
    assert isinstance(guard.target, Guard)
    found = skipped_expand(guard.target.site)
    x = compared_tensor(g, guard, found[0]) if found is not None else None
    return Absorb("", x, found[1]) if found is not None and x is not None else None


_NO = object()


def _choose(run: _Flips, first: Traced, guards: list[Op], chosen: dict[int, Choice], index: int,
            flipped: frozenset[int], natural: bool = False) -> Choice | object:
    """How guard ``index`` may be relaxed along with ``chosen`` (``_NO``: it may not). ``natural``: the
    call of ``run`` comes out the other way at ``index`` by itself (another example), not by a flip."""
    for choice in (None, *expand_sites(first.graph, guards[index])):
        trial = {**chosen, index: choice}
        if all(_alike(run, first, guards, trial, flip | (frozenset() if natural else flipped), flip | flipped)
               for flip in _subsets(list(chosen))):
            return choice
    return _NO


def _differing(first: Traced, other: Traced) -> list[int] | None:
    """The size guards of two calls' traces that came out apart; None when they do not pair up."""
    a, b = _size_guards(first.graph), _size_guards(other.graph)
    if len(a) != len(b) or first.branches != other.branches:
        return None
    return [i for i, (x, y) in enumerate(zip(a, b)) if x.target != y.target]


def _relaxed(plan: Plan, where: str) -> Graph:
    """The plan's graph with its guards relaxed: dropped, or (for a skipped expand) kept only on the rank the
    expand needs, unless the graph fixes that rank for every call (``ir.ranks``)."""
    first, guards, chosen = plan
    g = first.graph
    ranked = {i: c for i, c in chosen.items() if c is not None and static_rank(g, c.source) != c.rank}
    for index, choice in ranked.items():
        g = rank_guarded(g, guards[index], choice, where)
    return _without(g, [guards[i] for i in chosen if i not in ranked])


def _subsets(items: list[int]) -> list[frozenset[int]]:
    return [frozenset(x for b, x in enumerate(items) if mask >> b & 1) for mask in range(1 << len(items))]


def _alike(run: _Flips, first: Traced, guards: list[Op], trial: dict[int, Choice], flip: frozenset[int],
           other_way: frozenset[int]) -> bool:
    """Whether ``run`` with ``flip`` flipped records ``first``'s graph, apart from the ``trial`` guards and the
    expands skipped by those in ``other_way`` (the guards that come out the other way in that trace)."""
    other = run(flip)
    if other is None:
        return False
    flipped = _size_guards(other.graph)
    if len(flipped) != len(guards) or other.branches != first.branches:
        return False
    expected = _without(first.graph, [guards[i] for i in trial])
    for index, choice in trial.items():
        if choice is not None and index in other_way:
            expected = without_view(expected, choice)
    return _canonical(expected) == _canonical(_without(other.graph, [flipped[i] for i in trial]))


__all__ = ["Trace", "Traced", "relax_guards"]

"""Instances whose forwards differ only in how many times a loop ran share one class.

DenseNet's dense blocks hold 6, 12, 24 and 16 layers; each forward, traced, calls all of its
own layers in a run that grows a list (``loops.py``), so the four graphs differ only in the
length of that run. ``collapse`` shortens such a run to two calls: equal collapsed graphs make one
class, whose forward is the loop over ``self.children()`` (right for any number of layers) and
whose constructor builds the layers in a loop (``series.py``).
"""

from __future__ import annotations

import dataclasses

from torchgraft.backends.torch.loops import Loop, find_loops
from torchgraft.ir.graph import Graph
from torchgraft.ir.values import Arg, Seq


def self_run(g: Graph, children: tuple[str, ...]) -> Loop | None:
    """The growing run over every child of the block, in order, when ``g`` has one."""
    if len(children) < 2:
        return None
    same = ("child",) * len(children)
    loops = find_loops(g, lambda c: ("self", children, same) if c == "" else None)
    runs = [lp for lp in loops.values() if lp.grows is not None and lp.container == "" and lp.whole]
    return runs[0] if len(runs) == 1 else None


def _swap(a: Arg, old: Seq, new: Seq) -> Arg:
    if a == old:
        return new
    if isinstance(a, Seq):
        return Seq(tuple(_swap(x, old, new) for x in a.items), a.is_list)
    return a


def collapse(g: Graph, run: Loop) -> Graph:
    """``g`` with the growing run cut to its first two calls (the whole list becomes their list)."""
    assert run.grows is not None
    short = Seq(run.grows.items[:3], True)
    ops = []
    for op in g.ops[:run.first + 2] + g.ops[run.last + 1:]:
        args = tuple(_swap(a, run.grows, short) for a in op.args)
        kwargs = tuple((k, _swap(v, run.grows, short)) for k, v in op.kwargs)
        ops.append(dataclasses.replace(op, args=args, kwargs=kwargs))
    return Graph(g.inputs, tuple(ops), _swap(g.output, run.grows, short))


def op_map(base: Loop, other: Loop, n_base: int) -> list[int | None]:
    """For each op of the base graph, the index of the same op in the other instance's graph."""
    shift = other.last - base.last
    return [i if i <= base.last else i + shift for i in range(n_base)]

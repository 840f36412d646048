"""The forwards of one class's instances: compared with constants abstracted, and merged.

Two instances share a forward when their Graphs are equal up to value names, types and
the values of constants (constants that differ become constructor arguments). Two forwards
that differ in one of two ways still make one class:

- an optional child: one variant calls ``self.downsample(x)`` where the other uses ``x``
  (fx specialised ``if self.downsample is not None``) and only the first has that child;
  the class writes ``identity = self.downsample(x) if self.downsample is not None else x``;
- a conditional tail: one variant is the other plus ops at the end (``if self.use_res_connect:``);
  the class takes a flag and writes those ops under ``if self.<flag>:``.

Two forwards that differ otherwise, with the same children, inputs and no training branch,
become one class whose forward branches on a flag (``alternative``): ShuffleNet's
``InvertedResidual`` chunks its input at stride 1 and runs both branches at stride 2, as its
``if self.stride == 1:`` does; the class writes ``if self.use_branch1: <stride-2 forward>``
and then the other forward. The flag is named after a child only the flagged forward calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchgraft.backends.torch.guard_text import message_key
from torchgraft.backends.torch.loops import Loop
from torchgraft.backends.torch.rolled import collapse, op_map, self_run
from torchgraft.ir.graph import ChildCall, Graph, Guard, Op
from torchgraft.ir.lower import block_graph
from torchgraft.ir.nodes import Block, PySource
from torchgraft.ir.opkinds import OpKind, is_kind
from torchgraft.ir.values import Const, Ref

OpMap = list[int | None]
"""For each op of a merged graph, the index of the same op in one variant (None: not there)."""


EMPTY = Graph((), (), Const(None))
"""Stands in for a forward kept as Python source (``PySource``): nothing to compare or merge."""


def lowered(block: Block) -> tuple[Graph, Graph | None]:
    """A Block's forward and training-mode forward as Graphs (combinator bodies lowered)."""
    if isinstance(block.body, PySource):
        return EMPTY, None
    body = block_graph(block)
    train = block.train_body if isinstance(block.train_body, Graph) else None
    return body, train


def map_arg(a: Any, on_ref: Callable[[Ref], Any], on_const: Callable[[Const], Any]) -> Any:
    """Rebuild an argument with Refs and Consts replaced (any Arg kind, nested in tuples too)."""
    if isinstance(a, Ref):
        return on_ref(a)
    if isinstance(a, Const):
        return on_const(a)
    if isinstance(a, tuple):
        return tuple(map_arg(x, on_ref, on_const) for x in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        changes = {f.name: map_arg(getattr(a, f.name), on_ref, on_const) for f in dataclasses.fields(a)}
        return dataclasses.replace(a, **changes)
    return a


def arg_key(a: Any, names: dict[str, object], concrete: bool = False) -> object:
    """A hashable form of an argument: value names by position, constants by type (or value)."""
    if isinstance(a, Ref):
        return "ref", names.get(a.name, a.name)
    if isinstance(a, Const):
        return ("const", a) if concrete else ("const", type(a.value).__name__)
    if isinstance(a, tuple):
        return tuple(arg_key(x, names, concrete) for x in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return (type(a).__name__,) + tuple(arg_key(getattr(a, f.name), names, concrete)
                                           for f in dataclasses.fields(a))
    return a


def op_consts(op: Op) -> list[Const]:
    """The constants in an op's arguments, in a fixed order."""
    found: list[Const] = []

    def keep(c: Const) -> Const:
        found.append(c)
        return c

    map_arg((op.args, tuple(v for _, v in op.kwargs)), lambda r: r, keep)
    return found


def graph_key(g: Graph) -> object:
    """``g`` up to value names, types and constant values (the output's constants count)."""
    names: dict[str, object] = {inp.name: ("in", i) for i, inp in enumerate(g.inputs)}
    ops = []
    for i, op in enumerate(g.ops):
        kwargs = tuple((k, arg_key(v, names)) for k, v in op.kwargs)
        ops.append((_target_key(op.target), arg_key(op.args, names), kwargs))
        names[op.name] = ("op", i)
    inputs = tuple((i.name, i.kind, i.default) for i in g.inputs)
    return inputs, tuple(ops), arg_key(g.output, names, concrete=True)


def _target_key(target: object) -> object:
    """An op's target for comparison: a guard's message without its module path (``guard_text.py``)."""
    if isinstance(target, Guard):
        return "guard", target.kind, target.site, message_key(target.message)
    return target


def rename(g: Graph, ops: tuple[Op, ...], mapping: dict[str, str], output: Any = None) -> Graph:
    """A graph over ``ops`` with references renamed through ``mapping``."""
    def ren(r: Ref) -> Ref:
        return Ref(mapping.get(r.name, r.name))

    new = tuple(dataclasses.replace(op, args=map_arg(op.args, ren, lambda c: c),
                                    kwargs=tuple((k, map_arg(v, ren, lambda c: c)) for k, v in op.kwargs))
                for op in ops)
    return Graph(g.inputs, new, map_arg(g.output if output is None else output, ren, lambda c: c))


@dataclass
class Variant:
    """One distinct forward (and child set) among a class's instances."""

    body: Graph
    train: Graph | None
    children: tuple[str, ...]


@dataclass
class Family:
    """Variants written as one class: the merged forward and how each variant maps onto it."""

    body: Graph
    train: Graph | None
    base: int
    maps: dict[int, tuple[OpMap, OpMap]] = field(default_factory=dict)
    optional_ops: dict[str, str] = field(default_factory=dict)
    flag_at: int | None = None
    flag_result: str = ""
    flag_name: str = ""
    flagged: set[int] = field(default_factory=set)
    rolled: bool = False
    """The variants differ only in the length of a growing run over all children (``rolled.py``)."""
    alt: Graph | None = None
    """The flagged variant's whole forward, written under ``if self.<flag_name>:`` before ``body``."""
    alt_maps: dict[int, OpMap] = field(default_factory=dict)
    """For each variant, where the ops of ``alt`` are in its forward (``lifting.py``)."""

    @property
    def variants(self) -> list[int]:
        """Indices of the variants this family covers."""
        return list(self.maps)


def _identity_map(v: Variant) -> tuple[OpMap, OpMap]:
    return list(range(len(v.body.ops))), list(range(len(v.train.ops))) if v.train is not None else []


def _optional(w: Variant, wo: Variant) -> tuple[str, str, OpMap] | None:
    """(op, child, map of wo) when ``w`` is ``wo`` plus one call of a child only ``w`` has."""
    extra = [c for c in w.children if c not in wo.children]
    if len(extra) != 1 or [c for c in w.children if c in wo.children] != list(wo.children):
        return None
    target = graph_key(wo.body)
    for idx, op in enumerate(w.body.ops):
        if (isinstance(op.target, ChildCall) and op.target.path == extra[0] and len(op.args) == 1
                and isinstance(op.args[0], Ref) and not op.kwargs):
            reduced = rename(w.body, w.body.ops[:idx] + w.body.ops[idx + 1:], {op.name: op.args[0].name})
            if graph_key(reduced) == target:
                return op.name, extra[0], [None if i == idx else i - (i > idx) for i in range(len(w.body.ops))]
    return None


def _suffix(a: Variant, b: Variant) -> tuple[str, OpMap] | None:
    """(result value in b, map of a) when ``b`` is ``a`` plus ops at the end."""
    k = len(a.body.ops)
    if a.children != b.children or k >= len(b.body.ops) or not isinstance(a.body.output, Ref):
        return None
    if not isinstance(b.body.output, Ref) or b.body.output.name != b.body.ops[-1].name:
        return None
    position = {i.name: j for j, i in enumerate(a.body.inputs)}
    names_b = [i.name for i in b.body.inputs]
    out = a.body.output.name
    if out in position:
        result = names_b[position[out]]
    else:
        result = b.body.ops[next(j for j, op in enumerate(a.body.ops) if op.name == out)].name
    prefix = Graph(b.body.inputs, b.body.ops[:k], Ref(result))
    if graph_key(prefix) != graph_key(a.body):
        return None
    return result, list(range(k)) + [None] * (len(b.body.ops) - k)


def flag_name(g: Graph, start: int) -> str:
    """A name for the flag guarding ``g.ops[start:]``: ``residual`` for an add of an input, else ``use_<child>``."""
    last = g.ops[-1]
    inputs = {i.name for i in g.inputs}
    if (is_kind(last, OpKind.ADD)
            and any(isinstance(a, Ref) and a.name in inputs for a in last.args)):
        return "residual"
    child = next((op.target.path for op in g.ops[start:] if isinstance(op.target, ChildCall)), None)
    return f"use_{child.split('.')[0]}" if child else "extra"


def _try_merge(fam: Family, vs: list[Variant], j: int) -> bool:
    """Merge variant ``j`` into a one-variant family when one of the two patterns fits."""
    i = fam.base
    a, b = vs[i], vs[j]
    if len(fam.maps) != 1 or a.train is not None or b.train is not None:
        return False
    for w, wo in ((i, j), (j, i)):
        found = _optional(vs[w], vs[wo])
        if found is not None:
            op, child, m = found
            fam.body, fam.base = vs[w].body, w
            fam.maps = {w: _identity_map(vs[w]), wo: (m, [])}
            fam.optional_ops = {op: child}
            return True
    for short, long in ((i, j), (j, i)):
        found2 = _suffix(vs[short], vs[long])
        if found2 is not None:
            result, m = found2
            fam.body, fam.base = vs[long].body, long
            fam.maps = {long: _identity_map(vs[long]), short: (m, [])}
            fam.flag_at, fam.flag_result, fam.flagged = len(vs[short].body.ops), result, {long}
            fam.flag_name = flag_name(vs[long].body, len(vs[short].body.ops))
            return True
    return False


def _alternative(fam: Family, vs: list[Variant], j: int) -> bool:
    """Merge variant ``j`` into a one-variant family as the other side of a flag (module docstring)."""
    i = fam.base
    a, b = vs[i], vs[j]
    if len(fam.maps) != 1 or fam.rolled or fam.alt is not None or a.train is not None or b.train is not None:
        return False
    if a.children != b.children or [(x.name, x.kind, x.default) for x in a.body.inputs] != [
            (x.name, x.kind, x.default) for x in b.body.inputs]:
        return False
    only = {k: _called(vs[k].body) - _called(vs[m].body) for k, m in ((i, j), (j, i))}
    flagged = i if only[i] and not only[j] else j
    main = j if flagged == i else i
    fam.body, fam.base, fam.alt = vs[main].body, main, vs[flagged].body
    ops_main, ops_alt = len(vs[main].body.ops), len(vs[flagged].body.ops)
    fam.maps = {main: _identity_map(vs[main]), flagged: ([None] * ops_main, [])}
    fam.alt_maps = {main: [None] * ops_alt, flagged: list(range(ops_alt))}
    fam.flagged = {flagged}
    child = sorted(only[flagged])[0] if only[flagged] else ""
    fam.flag_name = f"use_{child.split('.')[0]}" if child else "use_alternative"
    return True


def _called(g: Graph) -> set[str]:
    return {op.target.path for op in g.ops if isinstance(op.target, ChildCall)}


def _rolled_key(v: Variant) -> tuple[object, Loop] | None:
    run = self_run(v.body, v.children) if v.train is None else None
    return None if run is None else (graph_key(collapse(v.body, run)), run)


def _merge_rolled(fam: Family, vs: list[Variant], j: int, keys: dict[int, tuple[object, Loop] | None]) -> bool:
    """Merge variant ``j`` into ``fam`` when both are the same growing loop over all children."""
    mine, base = keys[j], keys[fam.base]
    if mine is None or base is None or mine[0] != base[0] or fam.flag_at is not None or fam.optional_ops:
        return False
    if not fam.rolled and len(fam.maps) != 1:
        return False
    fam.rolled = True
    fam.maps[j] = (op_map(base[1], mine[1], len(vs[fam.base].body.ops)), [])
    return True


def families(vs: list[Variant]) -> list[Family]:
    """Group variants into families, merging pairs where a pattern fits (first variant first)."""
    fams: list[Family] = []
    keys = {j: _rolled_key(v) for j, v in enumerate(vs)} if len(vs) > 1 else {}
    for j, v in enumerate(vs):
        if keys and any(_merge_rolled(f, vs, j, keys) for f in fams):
            continue
        if any(_try_merge(f, vs, j) for f in fams if not f.rolled) or any(_alternative(f, vs, j) for f in fams):
            continue
        fams.append(Family(v.body, v.train, j, {j: _identity_map(v)}))
    return fams

"""Loop re-rolling: consecutive calls of a container's items become one ``for`` loop.

A trace unrolls ``for layer in self.layers: hidden = layer(hidden, mask)``; the graph then holds
one call per layer, each reading the previous call's result and otherwise the same arguments.
``find_loops`` finds such runs (also ``layer(hidden, mask)[0]`` per item, and a contiguous slice
of a ModuleList/Sequential); ``loop_lines`` writes one back:

    for layer in self.layers:
        hidden = layer(hidden, mask)

Each item's own ``forward`` runs, in the original order, on the same values, so the loop is
exact. A call that differs (another argument, a result used elsewhere) ends the run and is
written as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Op
from torchgraft.ir.traverse import join
from torchgraft.ir.values import Arg, Const, Ref, Seq, refs_in

GETITEM = FunctionCall("operator.getitem")

Items = Callable[[str], "tuple[str, tuple[str, ...], tuple[object, ...]] | None"]
"""Container path -> (kind, item keys in order, each item's emitted class) when every instance of
the class has these items ("" is the block's own children, kind ``self``)."""


@dataclass(frozen=True)
class Loop:
    """A run of item calls: ops ``first..last`` of the graph, one unit (call, maybe ``[i]``) per item."""

    first: int
    last: int
    container: str
    kind: str
    keys: tuple[str, ...]
    start: int
    count: int
    carry: int | str
    unpack: int | None
    grows: Seq | None = None
    """For a loop that grows a list (DenseNet: ``features.append(layer(features))``), the whole list."""

    @property
    def whole(self) -> bool:
        """True when the run calls every item of the container."""
        return self.start == 0 and self.count == len(self.keys)


@dataclass(frozen=True)
class _Unit:
    call: int
    end: int
    unpack: int | None


def _split(path: str) -> tuple[str, str]:
    head, _, key = path.rpartition(".")
    return head, key


def _unit(ops: tuple[Op, ...], i: int, users: dict[str, list[str]]) -> _Unit | None:
    if i >= len(ops) or not isinstance(ops[i].target, ChildCall):
        return None
    nxt = ops[i + 1] if i + 1 < len(ops) else None
    if (nxt is not None and nxt.target == GETITEM and nxt.args[:1] == (Ref(ops[i].name),) and len(nxt.args) == 2
            and isinstance(nxt.args[1], Const) and type(nxt.args[1].value) is int and not nxt.kwargs
            and users.get(ops[i].name) == [nxt.name]):
        return _Unit(i, i + 1, nxt.args[1].value)
    return _Unit(i, i, None)


def _carried(prev: Op, nxt: Op, prev_out: str) -> int | str | None:
    """Where ``nxt`` takes ``prev_out`` when every other argument equals ``prev``'s; else None."""
    if len(prev.args) != len(nxt.args) or [k for k, _ in prev.kwargs] != [k for k, _ in nxt.kwargs]:
        return None
    slots: list[tuple[int | str, object, object]] = [
        (i, a, b) for i, (a, b) in enumerate(zip(prev.args, nxt.args, strict=True))]
    slots += [(k, a, b) for (k, a), (_, b) in zip(prev.kwargs, nxt.kwargs, strict=True)]
    carried = [pos for pos, _, b in slots if b == Ref(prev_out)]
    if len(carried) != 1 or any(a != b for pos, a, b in slots if pos != carried[0]):
        return None
    return carried[0]


def _item_of(op: Op, items: Items) -> tuple[str, str, tuple[str, ...], tuple[object, ...], int] | None:
    """(container, kind, keys, classes, position) of the item ``op`` calls, when it calls one."""
    container, key = _split(op.target.path)  # type: ignore[union-attr]
    found = items(container)
    if found is None or key not in found[1]:
        return None
    kind, keys, classes = found
    return container, kind, keys, classes, keys.index(key)


def _run(ops: tuple[Op, ...], i: int, users: dict[str, list[str]], items: Items) -> Loop | None:
    unit = _unit(ops, i, users)
    if unit is None:
        return None
    where = _item_of(ops[i], items)
    if where is None:
        return None
    container, kind, keys, classes, start = where
    units, carry = [unit], None
    while start + len(units) < len(keys):
        prev = units[-1]
        nxt = _unit(ops, prev.end + 1, users)
        k = start + len(units)
        if nxt is None or ops[nxt.call].target != ChildCall(join(container, keys[k])) or classes[k] != classes[start]:
            break
        c = _carried(ops[prev.call], ops[nxt.call], ops[prev.end].name)
        if c is None or (carry is not None and c != carry) or nxt.unpack != unit.unpack:
            break
        if users.get(ops[prev.end].name) != [ops[nxt.call].name]:
            break
        carry = c
        units.append(nxt)
    if carry is None or len(units) < 2 or not isinstance(_arg(ops[i], carry), Ref):
        return None
    if kind not in ("ModuleList", "Sequential") and not (start == 0 and len(units) == len(keys)):
        return None
    return Loop(i, units[-1].end, container, kind, keys, start, len(units), carry, unit.unpack)


def _arg(op: Op, pos: int | str) -> Arg:
    return op.args[pos] if isinstance(pos, int) else dict(op.kwargs)[pos]


def _list_arg(op: Op) -> Seq | None:
    """The op's one argument when it is a list of values (``layer([x, a, b])``)."""
    if not isinstance(op.target, ChildCall) or len(op.args) != 1 or op.kwargs:
        return None
    a = op.args[0]
    return a if isinstance(a, Seq) and a.is_list and all(isinstance(i, Ref) for i in a.items) else None


def _outside(a: object, whole: Seq, results: set[str]) -> bool:
    """True if ``a`` reads one of ``results`` other than through the whole list."""
    if a == whole:
        return False
    if isinstance(a, Ref):
        return a.name in results
    if isinstance(a, (tuple, Seq)):
        return any(_outside(x, whole, results) for x in (a.items if isinstance(a, Seq) else a))
    return bool(set(refs_in(a)) & results) if not isinstance(a, Const) else False  # type: ignore[arg-type]


def _grow(g: Graph, i: int, items: Items) -> Loop | None:
    """A run of calls each taking the list of everything before it: ``[x]``, ``[x, a]``, ``[x, a, b]``..."""
    ops = g.ops
    first = _list_arg(ops[i])
    if first is None or len(first.items) != 1:
        return None
    where = _item_of(ops[i], items)
    if where is None:
        return None
    container, kind, keys, classes, start = where
    run, listed = [i], list(first.items)
    while start + len(run) < len(keys) and run[-1] + 1 < len(ops):
        k, nxt = start + len(run), ops[run[-1] + 1]
        listed.append(Ref(ops[run[-1]].name))
        if (nxt.target != ChildCall(join(container, keys[k])) or classes[k] != classes[start]
                or _list_arg(nxt) != Seq(tuple(listed), True)):
            listed.pop()
            break
        run.append(run[-1] + 1)
    whole = Seq(tuple(listed + [Ref(ops[run[-1]].name)]), True)
    results = {ops[j].name for j in run}
    later = [op for op in ops[run[-1] + 1:]]
    if (len(run) < 2 or not (start == 0 and len(run) == len(keys))
            or any(_outside((op.args, tuple(v for _, v in op.kwargs)), whole, results) for op in later)
            or _outside(g.output, whole, results)):
        return None
    return Loop(i, run[-1], container, kind, keys, start, len(run), 0, None, whole)


def find_loops(g: Graph, items: Items, exclude: frozenset[str] = frozenset()) -> dict[int, Loop]:
    """Runs of item calls in ``g`` to write as loops, by index of their first op (``exclude``: op
    names that must stay as they are)."""
    users = g.users()
    out: dict[int, Loop] = {}
    i = 0
    while i < len(g.ops):
        loop = _run(g.ops, i, users, items) or _grow(g, i, items)
        if loop is not None and not any(op.name in exclude for op in g.ops[loop.first:loop.last + 1]):
            out[i] = loop
            i = loop.last + 1
        else:
            i += 1
    return out


def carried_ref(loop: Loop, op: Op) -> str:
    """The value the loop's first call takes in the carried position (``find_loops`` only accepts a Ref)."""
    arg = _arg(op, loop.carry)
    assert isinstance(arg, Ref)
    return arg.name


def iteration(loop: Loop, container_code: str) -> str:
    """``self.layers``, ``self.layers[2:5]``, ``self.blocks.values()`` or ``self.children()``."""
    if not loop.container:
        return "self.children()"
    if loop.kind == "ModuleDict":
        return f"{container_code}.values()"
    if loop.whole:
        return container_code
    return f"{container_code}[{loop.start or ''}:{loop.start + loop.count}]"


def item_name(container: str, taken: Callable[[str], bool]) -> str:
    """The loop variable: the container's name in the singular (``layers`` -> ``layer``), else ``layer``."""
    last = container.rpartition(".")[2]
    singular = last[:-1] if last.endswith("s") and len(last) > 2 else ""
    for cand in (singular, "layer", "block", "module"):
        if cand and cand.isidentifier() and cand != last and not taken(cand):
            return cand
    return "item_module"

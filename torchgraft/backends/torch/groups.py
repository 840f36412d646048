"""Which Block instances share one emitted class, and in what order the classes are written.

Instances are grouped by original class and own state (names and kinds; shapes may
differ), then by forward: equal forwards share a class, and forwards that differ by an
optional child or a conditional tail are merged (``variants.py``). Classes are written
children first. The primary group of a class (the most instances) takes the class's
name; another gets a name saying what differs (``BottleneckDownsample``), never a number
when a difference can be named.

A Chain that records an ``nn.Sequential`` subclass (``Chain.cls``: DenseNet's ``_Transition``)
is planned as a Block of that class whose children are its items (``seq_block``); all its
instances form one group (``Group.sequential``): their forward is ``nn.Sequential``'s own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from torchgraft.backends.torch.guard_text import shared_messages
from torchgraft.backends.torch.names import Namespace
from torchgraft.backends.torch.variants import EMPTY, Family, Variant, families, graph_key, lowered
from torchgraft.ir.graph import ChildCall, Graph
from torchgraft.ir.nodes import Block, Chain, ChildRef, ClassRef, Node, PySource, module_children
from torchgraft.ir.traverse import join, walk
from torchgraft.ir.types import UNKNOWN


@dataclass
class Group:
    """Instances written as one class: their paths, the variants of their forward, the merged forward."""

    cls: ClassRef
    insts: list[tuple[str, Block]]
    variants: list[Variant]
    family: Family
    variant_of: list[int]
    name: str = ""
    deps: set[int] = field(default_factory=set)
    sequential: bool = False
    """The instances are ``nn.Sequential`` subclass Chains (``seq_block``): written without a forward."""


def is_seq_class(node: Node) -> bool:
    """True for a Chain that records the ``nn.Sequential`` subclass it was captured from."""
    return isinstance(node, Chain) and node.cls is not None


def seq_block(chain: Chain) -> Block:
    """The Block standing for an ``nn.Sequential`` subclass Chain while classes are planned."""
    assert chain.cls is not None
    return Block(chain.cls, chain.named(), Chain(*(ChildRef(n) for n in chain.names)))


def nested_blocks(node: Node, path: str) -> Iterator[str]:
    """Paths of the nearest Blocks below ``node`` (through containers, not into Blocks)."""
    for name, child in module_children(node):
        p = join(path, name)
        if isinstance(child, Block) or is_seq_class(child):
            yield p
        else:
            yield from nested_blocks(child, p)


def _heights(blocks: dict[str, Block]) -> dict[str, int]:
    out: dict[str, int] = {}
    for path in sorted(blocks, key=lambda p: -p.count(".") if p else 1):
        out[path] = 1 + max((out.get(p, 0) for p in nested_blocks(blocks[path], path)), default=0)
    return out


def _member_key(b: Block) -> tuple[object, ...]:
    source = (b.body.source, tuple(n for n, _ in b.body.attrs)) if isinstance(b.body, PySource) else None
    return (tuple((s.name, s.parameter, s.persistent, s.dtype) for s in b.state),  # requires_grad: build()
            tuple(n for n, _ in b.constants), source, b.extra_state and b.extra_state.source)


def _groups(blocks: dict[str, Block], by_height: bool, seq: frozenset[str]) -> list[Group]:
    heights = _heights(blocks) if by_height else {}
    buckets: dict[tuple[object, ...], list[tuple[str, Block]]] = {}
    for path, b in blocks.items():
        key = (b.cls, "sequential") if path in seq else (b.cls, _member_key(b), path == "")
        buckets.setdefault((*key, heights.get(path, 0)), []).append((path, b))
    out = []
    for insts in buckets.values():
        if insts[0][0] in seq:  # one class: children are unified, the forward is nn.Sequential's
            variant = Variant(EMPTY, None, tuple(n for n, _ in insts[0][1].children))
            out.append(Group(insts[0][1].cls, insts, [variant], Family(EMPTY, None, 0, {0: ([], [])}),
                             [0] * len(insts), sequential=True))
            continue
        variants: list[Variant] = []
        index: dict[object, int] = {}
        variant_of = []
        for _, b in insts:
            body, train = lowered(b)
            names = tuple(n for n, _ in b.children)
            vkey = (graph_key(body), None if train is None else graph_key(train), names)
            if vkey not in index:
                index[vkey] = len(variants)
                variants.append(Variant(body, train, names))
            elif _typed(body) > _typed(variants[index[vkey]].body):  # annotations from the best-typed instance
                variants[index[vkey]] = Variant(body, train, names)
            variant_of.append(index[vkey])
        for fam in families(variants):
            members = [k for k, v in enumerate(variant_of) if v in fam.maps]
            paths = [insts[k][0] for k in members]
            fam.body, fam.train = shared_messages(fam.body, paths) or fam.body, shared_messages(fam.train, paths)
            out.append(Group(insts[0][1].cls, [insts[k] for k in members], variants, fam,
                             [variant_of[k] for k in members]))
    return out


def _typed(g: Graph) -> int:
    return sum(i.type != UNKNOWN for i in g.inputs) + sum(op.type != UNKNOWN for op in g.ops)


def _order(groups: list[Group]) -> list[Group] | None:
    """Groups with every group after the groups of the blocks it contains; None on a cycle."""
    owner = {path: g for g, grp in enumerate(groups) for path, _ in grp.insts}
    for grp in groups:
        grp.deps = {owner[p] for path, b in grp.insts for p in nested_blocks(b, path)}
    state = [0] * len(groups)
    order: list[int] = []

    def visit(g: int) -> bool:
        if state[g] == 1:
            return False
        if state[g] == 0:
            state[g] = 1
            if not all(visit(d) for d in sorted(groups[g].deps)):
                return False
            state[g] = 2
            order.append(g)
        return True

    if not all(visit(g) for g in range(len(groups))):
        return None
    return [groups[g] for g in order]


def camel(name: str) -> str:
    """``downsample`` -> ``Downsample``, ``conv_proj`` -> ``ConvProj``."""
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", name) if p)


def _suffix(g: Group, primary: Group) -> str:
    mine, theirs = g.variants[g.family.base].children, primary.variants[primary.family.base].children
    extra = [c for c in mine if c not in theirs]
    stem = {re.sub(r"\d+$", "", c) for c in extra}
    if len(extra) > 1 and len(stem) == 1 and camel(next(iter(stem))):  # denselayer7..denselayer12
        prefix = stem.pop()
        return f"{sum(re.sub(r'[0-9]+$', '', c) == prefix for c in mine)}{camel(prefix)}s"
    if extra and camel(extra[0]):
        return camel(extra[0])
    missing = [c for c in theirs if c not in mine]
    if missing and camel(missing[0]):
        return "No" + camel(missing[0])
    called = {op.target.path for op in primary.family.body.ops if isinstance(op.target, ChildCall)}
    new = [op.target.path for op in g.family.body.ops if isinstance(op.target, ChildCall)
           and op.target.path not in called]
    return camel(new[0]) if new and camel(new[0]) else "Variant"


def _name(groups: list[Group], names: Namespace) -> None:
    by_cls: dict[ClassRef, list[Group]] = {}
    for g in groups:
        by_cls.setdefault(g.cls, []).append(g)
    for cls, gs in by_cls.items():
        primary = max(gs, key=lambda g: len(g.insts))
        primary.name = names.name(cls.name)
        for g in gs:
            if g is not primary:
                g.name = names.name(primary.name + _suffix(g, primary))


def plan(root: Node, names: Namespace) -> list[Group]:
    """The classes to write for the Blocks under ``root``, children first, with names."""
    blocks = {p: seq_block(n) if isinstance(n, Chain) else n for p, n in walk(root)
              if isinstance(n, (Block, Chain)) and (isinstance(n, Block) or n.cls is not None)}
    seq = frozenset(p for p, n in walk(root) if is_seq_class(n))
    groups = _order(_groups(blocks, False, seq))
    if groups is None:  # a class nested in itself: group by height so that order exists
        groups = _order(_groups(blocks, True, seq))
    assert groups is not None
    first = {path: i for i, path in enumerate(blocks)}
    _name(sorted(groups, key=lambda g: first[g.insts[0][0]]), names)
    return groups

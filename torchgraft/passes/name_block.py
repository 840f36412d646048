"""``name-block``: wrap selected structure into a named Block, one class in the emitted code.

The inverse of ``desugar``. Before/after (``name-block{where=neck as=Bottleneck}``)::

    neck = SkipConnection(nn.Sequential(reduce=Conv2d, act=ReLU, expand=Conv2d))

    class Bottleneck(nn.Module):                       # emitted
        def __init__(self): self.reduce = nn.Conv2d(...); self.act = nn.ReLU(); self.expand = ...
        def forward(self, x): return x + self.expand(self.act(self.reduce(x)))

The layers inside become the Block's children, named after their names in the structure
(numbered items take their layer's kind: ``conv2d``, ``conv2d_2``); keys move accordingly
(``neck.body.reduce.weight`` -> ``neck.reduce.weight``) and the report lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torchgraft.errors import IRError
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, ChildRef, ClassRef, Node, Parallel, SkipConnection
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join, map_tree
from torchgraft.passes.base import Match
from torchgraft.passes.rewrite import enclosing_map
from torchgraft.passes.selectors import Site, parse_selector
from torchgraft.passes.structural import Moves, MovingPass, unique_name

STRUCTURE = (Chain, Parallel, SkipConnection)
NAMED_MODULE = "named"
"""The ``ClassRef.module`` of classes made by this pass."""


def _base(name: str, node: Node) -> str:
    if not name.isdigit():
        return name
    kind = node.op if isinstance(node, Primitive) else getattr(getattr(node, "cls", None), "name", "layer")
    return kind.lower()


class _Wrapper:
    """Turns a structure into a body over ChildRefs, collecting the leaves as named children."""

    def __init__(self) -> None:
        self.children: list[tuple[str, Node]] = []
        self.moved: dict[str, str] = {}

    def body(self, node: Node, name: str, rel: str) -> Node:
        if isinstance(node, Chain):
            return Chain(*(self.body(c, n, join(rel, n)) for n, c in node.named()))
        if isinstance(node, Parallel):
            return Parallel(tuple(self.body(c, n, join(rel, n)) for n, c in node.named()), node.combine)
        if isinstance(node, SkipConnection):
            return SkipConnection(self.body(node.body, "body", join(rel, "body")), node.combine)
        child = unique_name(_base(name, node), {n for n, _ in self.children})
        self.children.append((child, node))
        self.moved[rel] = child
        return ChildRef(child)


def wrap(node: Node, cls_name: str) -> tuple[Block, dict[str, str]]:
    """``node`` (a Chain, Parallel or SkipConnection) as a Block named ``cls_name``; old -> new relative paths."""
    w = _Wrapper()
    body = w.body(node, "x", "")
    return Block(ClassRef(NAMED_MODULE, cls_name), tuple(w.children), body), w.moved


@dataclass(frozen=True)
class NameBlock(MovingPass):
    """Wrap each selected Chain/Parallel/SkipConnection into a Block of class ``as``.

    Options: ``where`` (a selector: ``neck``, ``kind:SkipConnection``, ``layer*.0``) and ``as``
    (the class name, an identifier; ``as_`` in Python). Sites with the same structure share the class.

    Before/after::

        SkipConnection(Chain(reduce, act, expand))   ->   Block<Bottleneck>(reduce, act, expand)
    """

    name: ClassVar[str] = "name-block"
    keeps_semantics: ClassVar[bool] = True
    where: str | None = None
    as_: str = "Block"

    def __post_init__(self) -> None:
        if not self.as_.isidentifier() or not self.as_[:1].isupper():
            raise IRError(f"name-block{{as={self.as_}}}: the class name must be an identifier starting with a "
                          "capital letter, e.g. as=Bottleneck")

    def plan(self, model: Model) -> Moves:
        """The structures this pass wraps."""
        sel, enc = parse_selector(self.where), enclosing_map(model.root)
        moves = Moves(model.root)

        def fn(path: str, node: Node) -> Node:
            if not isinstance(node, STRUCTURE) or not sel(Site(path, node, enc.get(path, ()))):
                return node
            block, _ = wrap(node, self.as_)  # the leaves themselves become its children: state moves with them
            moves.matches.append(Match(path, f"{type(node).__name__} -> Block<{self.as_}>", "structure"))
            return block

        moves.root = map_tree(model.root, fn)
        return moves

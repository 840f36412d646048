"""Walking and editing IR trees. Edits return new trees; nothing is changed in place."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields, replace

from torchgraft.ir.graph import Graph, PrimCall
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import (
    NODE_TYPES,
    Block,
    Chain,
    Container,
    Node,
    Parallel,
    SkipConnection,
    module_children,
)
from torchgraft.ir.primitives import Primitive


def join(path: str, name: str) -> str:
    """``join("layer1", "0") == "layer1.0"``; the root path is ``""``."""
    return f"{path}.{name}" if path else name


def node_at(node: Node, path: str) -> Node | None:
    """The module-level node at dotted ``path`` below ``node`` (None if there is none)."""
    for part in path.split("."):
        found = dict(module_children(node)).get(part)
        if found is None:
            return None
        node = found
    return node


def walk(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    """Every module-level node with its dotted path, parents before children (in order: depth first, children
    left to right; one stack, not a generator per level, so a deep tree costs no more per node)."""
    stack = [(path, node)]
    while stack:
        at, current = stack.pop()
        yield at, current
        kids = module_children(current)
        if kids:
            stack.extend([(f"{at}.{name}" if at else name, child) for name, child in reversed(kids)])


def find(model: Model | Node, pred: Callable[[str, Node], bool]) -> list[tuple[str, Node]]:
    """All (path, node) pairs in the tree for which ``pred(path, node)`` holds."""
    root = model.root if isinstance(model, Model) else model
    return [(p, n) for p, n in walk(root) if pred(p, n)]


def with_children(node: Node, children: tuple[tuple[str, Node], ...]) -> Node:
    """``node`` with its named children replaced (same names, new nodes)."""
    if isinstance(node, Chain):
        return Chain(*(c for _, c in children), names=tuple(n for n, _ in children), cls=node.cls)
    if isinstance(node, Parallel):
        return replace(node, branches=tuple(c for _, c in children), names=tuple(n for n, _ in children))
    if isinstance(node, SkipConnection):
        return replace(node, body=children[0][1])
    if isinstance(node, Container):
        return replace(node, items=children)
    if isinstance(node, Block):
        return replace(node, children=children)
    return node


def with_bodies(block: Block, body: Node, train_body: Node | None) -> Block:
    """``block`` with new forward bodies. Its members (children, state, constants) are the same, so of
    ``Block``'s checks only the body's is run again: a pass that edits the forwards of thousands of blocks
    does not re-check their member names each time.

    >>> with_bodies(block, Chain(ChildRef("linear"), SiLU()), None).body   # doctest: +SKIP
    """
    if type(block) is not Block or not isinstance(body, NODE_TYPES) or not (
            train_body is None or isinstance(train_body, NODE_TYPES)):
        return replace(block, body=body, train_body=train_body)  # the usual checks, and their error
    new = object.__new__(Block)
    for name in _BLOCK_FIELDS:
        object.__setattr__(new, name, getattr(block, name))
    object.__setattr__(new, "body", body)
    object.__setattr__(new, "train_body", train_body)
    return new


_BLOCK_FIELDS = tuple(f.name for f in fields(Block))


def map_tree(node: Node, fn: Callable[[str, Node], Node], path: str = "") -> Node:
    """Rebuild bottom-up: children first, then ``fn(path, node_with_new_children)``."""
    kids = module_children(node)
    if kids:
        new = tuple((n, map_tree(c, fn, join(path, n))) for n, c in kids)
        if any(a is not b for (_, a), (_, b) in zip(kids, new)):
            node = with_children(node, new)
    return fn(path, node)


def replace_at(model: Model, path: str, new: Node) -> Model:
    """A new model with the node at ``path`` replaced by ``new``."""
    return model.with_root(map_tree(model.root, lambda p, n: new if p == path else n))


def _body_prims(body: Node | None) -> Iterator[Primitive]:
    """The primitives a Block body uses: inline in its combinators, or called in its graph (PrimCall)."""
    if isinstance(body, Graph):
        yield from (op.target.prim for op in body.ops if isinstance(op.target, PrimCall))
    elif isinstance(body, Primitive):
        yield body
    elif isinstance(body, (Chain, Parallel, SkipConnection)):
        for _, item in module_children(body):
            yield from _body_prims(item)


def descendants(node: Node) -> Iterator[Node]:
    """Every node below ``node`` (not ``node`` itself): module-level descendants, parents first, and
    the primitives each Block's forward uses (see ``_body_prims``)."""
    if isinstance(node, Block):
        for body in (node.body, node.train_body):
            yield from _body_prims(body)
    for _, child in module_children(node):
        yield child
        yield from descendants(child)


def contains(node: Node, kind: type | tuple[type, ...]) -> bool:
    """True when a node below ``node`` is a ``kind``: ``contains(block, Conv)`` (see ``descendants``)."""
    return any(isinstance(n, kind) for n in descendants(node))

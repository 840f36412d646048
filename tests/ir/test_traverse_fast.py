"""``walk`` (one stack, no generator per level) keeps its order; ``with_bodies`` re-checks only the body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from torchgraft import ir
from torchgraft.errors import IRError
from torchgraft.ir.nodes import Block, Chain, ChildRef, ClassRef, Node, module_children
from torchgraft.ir.traverse import join, walk, with_bodies


def _recursive(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    yield path, node
    for name, child in module_children(node):
        yield from _recursive(child, join(path, name))


def _tree() -> Node:
    leaf = Block(ClassRef("m", "Leaf"), (("fc", ir.Linear(4, 4)), ("act", ir.ReLU())),
                 Chain(ChildRef("fc"), ChildRef("act")))
    return Chain(Chain(leaf, ir.ReLU()), ir.Parallel(ir.Linear(4, 4), Chain(ir.GELU(), leaf)), leaf)


def test_walk_visits_parents_first_children_in_order() -> None:
    tree = _tree()
    assert [(p, id(n)) for p, n in walk(tree)] == [(p, id(n)) for p, n in _recursive(tree)]
    assert [p for p, _ in walk(tree, "root")][:3] == ["root", "root.0", "root.0.0"]


def test_with_bodies_keeps_the_members_and_checks_the_body() -> None:
    block = _tree().items[2]  # type: ignore[attr-defined]
    new = with_bodies(block, Chain(ChildRef("fc"), ir.SiLU()), None)
    assert type(new) is Block and new.children is block.children and new.cls == block.cls
    assert new == Block(block.cls, block.children, Chain(ChildRef("fc"), ir.SiLU()))
    with pytest.raises(IRError, match="is not an IR node"):
        with_bodies(block, "not a node", None)  # type: ignore[arg-type]

"""Plain attributes a copied forward reads from its children (``self.update_block.hidden_state_size``).

A child captured as a Block is emitted as a class of its own, holding only what its own forward
needs; the parent's copied source may read more of it (RAFT reads ``hidden_state_size`` of its update
block). Such attributes, when they are plain constants, are added to the child's Block constants, so
the emitted child has them too (``self.hidden_state_size = 128``).
"""

from __future__ import annotations

import ast
from dataclasses import replace

from torch import nn

from torchgraft.ir.nodes import Block, Node, PySource
from torchgraft.ir.values import Const


def _child_reads(source: str) -> set[tuple[str, str]]:
    """``(child, attr)`` of every ``self.child.attr`` the source reads."""
    out = set()
    for n in ast.walk(ast.parse(source)):
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and isinstance(n.value.value, ast.Name)
                and n.value.value.id == "self" and not isinstance(n.ctx, ast.Store)):
            out.add((n.value.attr, n.attr))
    return out


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def with_child_attrs(mod: nn.Module, body: Node, kids: tuple[tuple[str, Node], ...]) -> tuple[tuple[str, Node], ...]:
    """``kids`` with the plain attributes ``body`` (a copied source) reads of them added as constants."""
    if not isinstance(body, PySource):
        return kids
    wanted: dict[str, dict[str, object]] = {}
    for child, attr in _child_reads(body.source):
        sub = mod._modules.get(child)
        value = sub.__dict__.get(attr) if sub is not None else None
        if sub is not None and attr in sub.__dict__ and _plain(value):
            wanted.setdefault(child, {})[attr] = value
    out = []
    for name, node in kids:
        if isinstance(node, Block) and name in wanted:
            have = {n for n, _ in node.constants} | {s.name for s in node.state} | {n for n, _ in node.children}
            extra = tuple((a, Const(v)) for a, v in sorted(wanted[name].items()) if a not in have)
            node = replace(node, constants=node.constants + extra)
        out.append((name, node))
    return tuple(out)

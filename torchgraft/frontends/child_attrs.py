"""Plain attributes a copied forward reads from its children (``self.update_block.hidden_state_size``).

A child captured as a Block is emitted as a class of its own, holding only what its own forward
needs; the parent's copied source may read more of it (RAFT reads ``hidden_state_size`` of its update
block). Such attributes, when they are plain constants, are added to the child's Block constants, so
the emitted child has them too (``self.hidden_state_size = 128``).

Methods the parent calls on a child whose forward is itself copied source
(``self.transform.postprocess(...)`` in torchvision's detection models) are copied into the
child's source with its forward (``source_copy.copy_methods``).
"""

from __future__ import annotations

import ast
import types
from dataclasses import replace

from torch import nn

from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.source_copy import copy_methods
from torchgraft.ir.model import Helper
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


def _with_methods(sub: nn.Module, node: Block, attrs: set[str], helpers: dict[str, Helper]) -> Block:
    """``node`` (a copied-source Block of ``sub``) with the methods ``attrs`` names copied too, when it lacks them."""
    if not isinstance(node.body, PySource) or not node.body.source.startswith("def forward("):
        return node
    cls = type(sub)
    methods = sorted(a for a in attrs if isinstance(getattr(cls, a, None), types.FunctionType)
                     and not hasattr(nn.Module, a) and f"def {a}(" not in node.body.source)
    if not methods:
        return node
    try:
        source, copied = copy_methods(sub, helpers, ("forward", *methods))
    except TraceError:
        return node  # the emitted child lacks them: the parent's call fails loudly (AttributeError)
    return replace(node, body=PySource(source, copied))


def _kids_with_methods(mod: nn.Module, body: PySource, kids: tuple[tuple[str, Node], ...],
                       helpers: dict[str, Helper]) -> tuple[tuple[str, Node], ...]:
    reads: dict[str, set[str]] = {}
    for child, attr in _child_reads(body.source):
        reads.setdefault(child, set()).add(attr)
    return tuple((n, _with_methods(mod._modules[n], k, reads[n], helpers)  # type: ignore[arg-type]
                  if isinstance(k, Block) and n in reads and mod._modules.get(n) is not None else k)
                 for n, k in kids)


def with_child_methods(mod: nn.Module, node: Node, helpers: dict[str, Helper]) -> Node:
    """``node`` (``mod``'s Block) with the methods its copied source calls on its children copied into
    theirs, once those children are final (capture's fallbacks replace them after the parent is built)."""
    if not isinstance(node, Block) or not isinstance(node.body, PySource):
        return node
    return replace(node, children=_kids_with_methods(mod, node.body, node.children, helpers))


def with_child_attrs(mod: nn.Module, body: Node, kids: tuple[tuple[str, Node], ...],
                     helpers: dict[str, Helper] | None = None) -> tuple[tuple[str, Node], ...]:
    """``kids`` with the plain attributes ``body`` (a copied source) reads of them added as constants,
    and the methods it calls on children whose forward is copied source copied into theirs."""
    if not isinstance(body, PySource):
        return kids
    if helpers is not None:
        kids = _kids_with_methods(mod, body, kids, helpers)
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

"""Declarative, weight-aware patterns over structure: the third rewrite tier.

A pattern describes a module-level node by structure and kinds::

    Seq(Kind("Conv"), Kind("BatchNorm"), Kind("Activation"))        # a run inside an nn.Sequential
    Seq(Branches(Seq(Cap("c3", Kind("Conv")), Cap("b3", Kind("BatchNorm"))),
                 Seq(Cap("c1", Kind("Conv")), Cap("b1", Kind("BatchNorm"))),
                 Cap("bid", Kind("BatchNorm")), combine="add"),
        Cap("act", Kind("Activation")))                              # a RepVGG block's forward

Blocks are matched through their structure (the body capture stored, ``ir.stored``, or the one
``ir.structure.recognize`` reads in a Graph body) with child references resolved to the
children, so a pattern sees ``relu(dense(x) + x1(x) + id(x))``
as a Parallel of its branches. ``rewrite(model, pattern, builder)`` calls
``builder(match)`` for each site; the builder gets the captured nodes and their tensors
and returns the replacement node and its tensors (keys relative to it). Inside an
``nn.Sequential`` a matched window is replaced by the new node followed by
``nn.Identity`` so later indices keep their keys. Matching visits each node once per
pattern alternative: linear in model size.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Union

import torch

from torchgraft.ir.graph import Graph
from torchgraft.ir.lower import is_structural
from torchgraft.ir.model import Helper, Model
from torchgraft.ir.nodes import Block, Chain, ChildRef, CombineKind, Node, Opaque, Parallel, SkipConnection
from torchgraft.ir.primitives import Identity, Primitive
from torchgraft.ir.structure import recognize
from torchgraft.ir.traverse import join, map_tree, node_at
from torchgraft.passes.base import Match as Site


@dataclass(frozen=True)
class Kind:
    """A primitive family (``"Conv"``), torch op (``"Conv2d"``) or Block class name (``"Bottleneck"``)."""

    name: str


@dataclass(frozen=True)
class Seq:
    """A Chain whose items match in order."""

    items: tuple[Pattern, ...]

    def __init__(self, *items: Pattern) -> None:
        object.__setattr__(self, "items", items)


@dataclass(frozen=True)
class Branches:
    """A Parallel joined by ``combine`` (a kind name; ``"call"`` matches any function combine), its branches
    in any order when the combine is commutative (``Combine.commutative``); ``Kind("Identity")`` matches a skip."""

    branches: tuple[Pattern, ...]
    combine: str = "add"

    def __init__(self, *branches: Pattern, combine: str = "add") -> None:
        object.__setattr__(self, "branches", branches)
        object.__setattr__(self, "combine", combine)


@dataclass(frozen=True)
class Cap:
    """Bind what ``pattern`` matched under ``name`` (the builder receives it)."""

    name: str
    pattern: Pattern


Pattern = Union[Kind, Seq, Branches, Cap]


@dataclass
class PatternMatch:
    """What a pattern matched: the site's path, captured nodes, their paths and tensors."""

    path: str
    nodes: dict[str, Node] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


Builder = Callable[[PatternMatch], "tuple[Node, Mapping[str, torch.Tensor]] | None"]


def _kind_ok(k: Kind, node: Node) -> bool:
    if isinstance(node, Primitive):
        return k.name in (node.op, type(node).__name__)
    if isinstance(node, (Block, Opaque)):
        return k.name == node.cls.name
    return k.name == "Identity" and node == Chain()


class _Matcher:
    def __init__(self, block_stack: list[tuple[str, Block]], helpers: Mapping[str, Helper] | None = None) -> None:
        self.stack = block_stack
        self.helpers = helpers

    def resolve(self, node: Node, path: str) -> tuple[Node, str]:
        """Follow ChildRefs to the child nodes; look at Blocks through their structure."""
        if isinstance(node, ChildRef) and self.stack:
            bpath, block = self.stack[-1]
            return block.child(node.path), join(bpath, node.path)
        return node, path

    def view(self, node: Node, path: str) -> Node:
        if isinstance(node, Block) and is_structural(node.body) and node.train_body is None:
            self.stack.append((path, node))  # structure stored at capture (ir.stored): matched as it is
            return node.body
        if isinstance(node, Block) and isinstance(node.body, Graph) and node.train_body is None:
            self.stack.append((path, node))
            return recognize(node.body, functools.partial(node_at, node), self.helpers)
        return node

    def match(self, pat: Pattern, node: Node, path: str, out: PatternMatch) -> bool:
        node, path = self.resolve(node, path)
        if isinstance(pat, Cap):
            if not self.match(pat.pattern, node, path, out):
                return False
            out.nodes[pat.name], out.paths[pat.name] = node, path
            return True
        if isinstance(pat, Kind):
            return _kind_ok(pat, node)
        structural = self.view(node, path) if isinstance(node, Block) else node
        pushed = structural is not node
        try:
            return self._structure(pat, structural, path, out)
        finally:
            if pushed:
                self.stack.pop()

    def _structure(self, pat: Pattern, node: Node, path: str, out: PatternMatch) -> bool:
        if isinstance(pat, Seq):
            items = node.named() if isinstance(node, Chain) else ()
            return len(items) == len(pat.items) and all(
                self.match(p, c, join(path, n) if not isinstance(c, ChildRef) else path, out)
                for p, (n, c) in zip(pat.items, items))
        if isinstance(pat, Branches):
            if isinstance(node, SkipConnection):
                node = Parallel((Chain(), node.body), node.combine)
            if not isinstance(node, Parallel) or node.combine.kind != CombineKind(pat.combine):
                return False
            if len(node.branches) != len(pat.branches):
                return False
            orders = (itertools.permutations(node.named()) if node.combine.commutative
                      else [node.named()])  # a - b is not b - a; cat order is the channel order; atan2(a, b)
            for order in orders:
                trial = PatternMatch(out.path)
                if all(self.match(p, c, join(path, n), trial) for p, (n, c) in zip(pat.branches, order)):
                    out.nodes.update(trial.nodes)
                    out.paths.update(trial.paths)
                    return True
            return False
        return False


def _tensors(model: Model, path: str) -> dict[str, torch.Tensor]:
    prefix = path + "." if path else ""
    return {k[len(prefix):]: v for k, v in model.weights.items() if k.startswith(prefix)}


def rewrite(model: Model, pattern: Pattern, builder: Builder) -> tuple[Model, list[Site]]:
    """Replace every node (or Sequential window, for a ``Seq`` pattern) matching ``pattern``."""
    weights = dict(model.weights)
    sites: list[Site] = []
    helpers = model.helper_functions()

    def attempt(node: Node, path: str) -> tuple[Node, Mapping[str, torch.Tensor]] | None:
        m = PatternMatch(path)
        if not _Matcher([], helpers).match(pattern, node, path, m):
            return None
        m.tensors = {name: _tensors(model, p) for name, p in m.paths.items()}
        return builder(m)

    def install(path: str, new: Node, tensors: Mapping[str, torch.Tensor], old_paths: list[str]) -> None:
        for old in old_paths:
            for k in [k for k in weights if k == old or k.startswith(old + ".")]:
                del weights[k]
        weights.update({join(path, k): v for k, v in tensors.items()})
        sites.append(Site(path, type(new).__name__, "pattern"))

    def fn(path: str, node: Node) -> Node:
        if isinstance(node, Chain) and isinstance(pattern, Seq) and len(pattern.items) > 1:
            return _windows(node, path, attempt, install, len(pattern.items))
        got = attempt(node, path)
        if got is None:
            return node
        install(path, got[0], got[1], [path])
        return got[0]

    root = map_tree(model.root, fn)
    return replace(model, root=root, weights=weights, types=()), sites


def _windows(chain: Chain, path: str, attempt: Callable[..., object], install: Callable[..., None],
             width: int) -> Node:
    items = list(chain.items)
    i = 0
    while i + width <= len(items):
        window = Chain(*items[i:i + width], names=chain.names[i:i + width])
        got = attempt(window, path)
        if got is None:
            i += 1
            continue
        new: Node = got[0]  # type: ignore[index]
        tensors: Mapping[str, torch.Tensor] = got[1]  # type: ignore[index]
        first = join(path, chain.names[i])
        install(first, new, tensors, [join(path, n) for n in chain.names[i:i + width]])
        items[i:i + width] = [new] + [Identity()] * (width - 1)
        i += width
    return chain if items == list(chain.items) else Chain(*items, names=chain.names)

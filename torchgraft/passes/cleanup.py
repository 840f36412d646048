"""Clean-up passes: ``remove-dropout``, ``eliminate-identity``, ``flatten-chains``.

They tidy a model after other passes. ``remove-dropout`` keeps every state_dict key;
the other two may rename keys (later Sequential indices shift): they build the new tree out of
the layers they keep, ``ir.ownership.moved`` carries each layer's state along, and the report's
``keys_renamed`` is derived from the same edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from torchgraft.ir.graph import ChildCall, Graph, Op
from torchgraft.ir.lower import is_structural, leaf_sites
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, Parallel, SkipConnection
from torchgraft.ir.opkinds import OpKind, kind_of
from torchgraft.ir.ownership import moved
from torchgraft.ir.primitives import Dropout, Identity, Recurrent
from torchgraft.ir.traverse import join, map_tree
from torchgraft.ir.values import Ref, rename_refs
from torchgraft.passes.base import Match, Pass
from torchgraft.passes.rewrite import enclosing_map
from torchgraft.passes.selectors import Site, parse_selector


def drop_passthrough_ops(g: Graph, drop: set[str]) -> Graph:
    """``g`` without the named ops, each of which returns its first argument unchanged."""
    ren: dict[str, str] = {}
    ops = []
    for op in g.ops:
        if op.name in drop and op.args and isinstance(op.args[0], Ref):
            ren[op.name] = ren.get(op.args[0].name, op.args[0].name)
            continue
        ops.append(replace(op, args=tuple(rename_refs(a, ren) for a in op.args),
                           kwargs=tuple((k, rename_refs(v, ren)) for k, v in op.kwargs)))
    return Graph(g.inputs, tuple(ops), rename_refs(g.output, ren))


def _block_without(block: Block, path: str, is_gone: Callable[[str, Node], bool], matches: list[Match],
                   what: str) -> Block:
    """Remove children for which ``is_gone(path, node)`` holds, the ops calling them, and (for
    dropout) ``F.dropout`` calls the selector admits."""
    gone = {n for n, c in block.children if is_gone(join(path, n), c)}
    if is_structural(block.body) and block.train_body is None:
        return _from_structure(block, gone, path, matches, what)
    graphs = [g for g in (block.body, block.train_body) if isinstance(g, Graph)]
    if not graphs:
        return block
    calls = {n: [op for g in graphs for op in g.ops if isinstance(op.target, ChildCall) and op.target.path == n]
             for n in gone}
    gone = {n for n in gone if calls[n] and all(len(op.reads()) == 1 and not op.kwargs for op in calls[n])}
    drop = {op.name for n in gone for op in calls[n]}
    if what == "dropout":
        fn_drops = {op.name for g in graphs for op in g.ops
                    if _is_dropout_call(op) and is_gone(join(path, op.name), Dropout())}
        drop |= fn_drops
        matches += [Match(join(path, n), "F.dropout", "functional") for n in sorted(fn_drops)]
    if not drop:
        return block
    matches += [Match(join(path, n), what) for n in sorted(gone)]
    body = drop_passthrough_ops(block.body, drop) if isinstance(block.body, Graph) else block.body
    train = drop_passthrough_ops(block.train_body, drop) if isinstance(block.train_body, Graph) else block.train_body
    return replace(block, children=tuple((n, c) for n, c in block.children if n not in gone),
                   body=body, train_body=train)


def _from_structure(block: Block, gone: set[str], path: str, matches: list[Match], what: str) -> Block:
    """A structural body without the gone children: each call of one becomes the identity."""
    called = {n.path for _, n in leaf_sites(block.body) if isinstance(n, ChildRef)}
    gone &= called
    if not gone:
        return block
    matches += [Match(join(path, n), what) for n in sorted(gone)]
    body = _without(block.body, gone)
    return replace(block, children=tuple((n, c) for n, c in block.children if n not in gone), body=body)


def _without(node: Node, gone: set[str]) -> Node:
    """``node`` with calls of the ``gone`` children removed (the identity, ``Chain()``, where one stood alone)."""
    if isinstance(node, ChildRef):
        return Chain() if node.path in gone else node
    if isinstance(node, Chain):
        items = [i for i in (_without(i, gone) for i in node.items) if i != Chain()]
        return items[0] if len(items) == 1 else Chain(*items)
    if isinstance(node, SkipConnection):
        return replace(node, body=_without(node.body, gone))
    if isinstance(node, Parallel):
        return replace(node, branches=tuple(_without(b, gone) for b in node.branches), names=node.names)
    return node


def _is_dropout_call(op: Op) -> bool:
    found = kind_of(op)
    return found is not None and found.kind is OpKind.DROPOUT and not found.in_place


@dataclass(frozen=True)
class RemoveDropout(Pass):
    """Remove dropout (modules, ``F.dropout``, and the between-layer ``dropout`` of LSTM/GRU/RNN, set to 0):
    an inference clean-up; keys are unchanged.

    Before/after::

        self.fc(self.dropout(x))                 ->  self.fc(x)
        nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1))  ->  nn.Sequential(nn.Linear(8, 8), nn.Identity())
    """

    name: ClassVar[str] = "remove-dropout"
    keeps_semantics: ClassVar[bool] = True
    where: str | None = None

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        sel = parse_selector(self.where)
        matches: list[Match] = []
        enc = enclosing_map(model.root)
        is_drop = lambda p, c: isinstance(c, Dropout) and sel(Site(p, c, enc.get(p, ())))  # noqa: E731

        def fn(path: str, node: Node) -> Node:
            if isinstance(node, Recurrent) and node.dropout and sel(Site(path, node, enc.get(path, ()))):
                matches.append(Match(path, f"{node.op} dropout={node.dropout}"))
                return replace(node, dropout=0.0)
            if isinstance(node, Chain):
                items = tuple(Identity() if is_drop(join(path, n), c) else c for n, c in node.named())
                matches.extend(Match(join(path, n), "dropout") for (n, a), b in zip(node.named(), items) if a != b)
                return Chain(*items, names=node.names) if items != node.items else node
            if isinstance(node, Block):
                return _block_without(node, path, is_drop, matches, "dropout")
            return node

        return model.with_root(map_tree(model.root, fn)), matches


@dataclass(frozen=True)
class EliminateIdentity(Pass):
    """Remove ``nn.Identity`` layers: Sequential items (later indices shift: keys renamed) and
    Block children together with the calls to them.

    Before/after::

        nn.Sequential(nn.Conv2d(3, 8, 3), nn.Identity(), nn.ReLU())  ->  nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        (key 2.* is not affected: ReLU has none; a later Conv at index 3 would become 2)
    """

    name: ClassVar[str] = "eliminate-identity"
    where: str | None = None

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        sel = parse_selector(self.where)
        matches: list[Match] = []
        enc = enclosing_map(model.root)
        is_id = lambda p, c: isinstance(c, Identity) and sel(Site(p, c, enc.get(p, ())))  # noqa: E731

        def fn(path: str, node: Node) -> Node:
            if isinstance(node, Chain):
                return self._chain(path, node, is_id, matches)
            if isinstance(node, Block):
                return _block_without(node, path, is_id, matches, "identity")
            return node

        root = map_tree(model.root, fn)
        return (moved(model, root) if matches else model), matches

    @staticmethod
    def _chain(path: str, node: Chain, is_id: Callable[[str, Node], bool], matches: list[Match]) -> Node:
        kept = [(n, c) for n, c in node.named() if not is_id(join(path, n), c)]
        if len(kept) == len(node.items) or not kept:
            return node
        matches.extend(Match(join(path, n), "identity") for n, c in node.named() if (n, c) not in kept)
        numbered = node.names == tuple(str(i) for i in range(len(node.items)))
        names = tuple(str(i) for i in range(len(kept))) if numbered else tuple(n for n, _ in kept)
        return Chain(*(c for _, c in kept), names=names)  # the kept items themselves: keys follow them


@dataclass(frozen=True)
class FlattenChains(Pass):
    """Splice Sequentials nested directly in Sequentials into their parent (keys renamed).

    Before/after::

        nn.Sequential(nn.Sequential(conv, bn), relu)  ->  nn.Sequential(conv, bn, relu)
        keys 0.0.weight -> 0.weight, 0.1.* -> 1.*
    """

    name: ClassVar[str] = "flatten-chains"

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        matches: list[Match] = []

        def fn(path: str, node: Node) -> Node:
            if not isinstance(node, Chain) or not any(isinstance(c, Chain) for c in node.items):
                return node
            if node.names != tuple(str(i) for i in range(len(node.items))):
                return node
            flat: list[Node] = []
            for n, c in node.named():
                if isinstance(c, Chain):
                    matches.append(Match(join(path, n), f"Chain of {len(c.items)}"))
                spliced = isinstance(c, Chain) and all(x == str(i) for i, x in enumerate(c.names))
                flat.extend(c.items if isinstance(c, Chain) and spliced else (c,))
            return Chain(*flat)  # the items themselves, renumbered: keys follow them

        root = map_tree(model.root, fn)
        return (moved(model, root) if matches else model), matches

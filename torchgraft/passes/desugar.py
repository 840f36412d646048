"""``desugar``: a Block whose forward is only structure becomes that structure (Flux's de-sugaring).

Before/after (a torchvision ``BasicBlock`` without downsample)::

    Block<BasicBlock>(conv1, bn1, relu, conv2, bn2)       relu(bn2(conv2(relu(bn1(conv1(x))))) + x)
    ->  Chain(SkipConnection(Chain(conv1, bn1, relu, conv2, bn2), add), relu)

State keys move with their layers (``layer1.0.conv1.weight`` -> ``layer1.0.0.body.conv1.weight``);
the report lists every rename. A Block is left alone (and listed as skipped, with the reason)
when its forward does more than structure: guards, several inputs, constants, its own
parameters, a child used twice or not at all, or an in-place op on a value a branch shares.
An in-place join (``out += x``) is structure only when ``out`` is a tensor the forward made
(``out = self.bn2(...)``): after ``h = self.drop(x)`` (eval dropout returns ``x`` itself),
``h -= f(x)`` writes into the caller's tensor, which a ``Parallel`` would not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from torchgraft.ir.activations import Spelling
from torchgraft.ir.graph import ChildCall, Graph, MethodCall, PrimCall
from torchgraft.ir.lower import is_structural
from torchgraft.ir.model import Helper, Model
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, Parallel, SkipConnection
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.structure import recognize
from torchgraft.ir.traverse import join, map_tree, node_at
from torchgraft.passes.base import Match, Skip
from torchgraft.passes.rewrite import enclosing_map
from torchgraft.passes.selectors import Site, parse_selector
from torchgraft.passes.structural import Moves, MovingPass, unique_name


class _Unfit(Exception):
    """Why a Block cannot be desugared."""


def _check_graph(block: Block) -> Node:
    """The block's body (a Graph, or the structure capture stored) when nothing but its forward stands in the way."""
    if block.state or block.constants or block.extra_state is not None:
        raise _Unfit("it owns parameters, buffers or constants itself")
    if is_structural(block.body) and block.train_body is None:
        return block.body
    if not isinstance(block.body, Graph):
        raise _Unfit("its body is not a captured forward")
    if block.train_body is not None and block.train_body != block.body:
        raise _Unfit("its forward differs in training mode")
    for op in block.body.ops:
        if isinstance(op.target, (ChildCall, PrimCall)) and (len(op.args) != 1 or op.kwargs):
            raise _Unfit(f"{op.name} passes more than the one input")
    return block.body


def _first_inplace(node: Node, block: Block) -> bool:
    """Whether the first layer ``node`` runs writes its input in place."""
    while isinstance(node, Chain) and node.items:
        node = node.items[0]
    if isinstance(node, ChildRef):
        node = block.child(node.path)
    return bool(getattr(node, "inplace", False))


def _what(node: Node) -> str:
    """``torch.flatten``, ``.view``: what a non-structural part of a forward calls."""
    if isinstance(node, Graph) and node.ops:
        target = node.ops[0].target
        name = getattr(target, "qualname", None) or getattr(target, "name", None) or type(target).__name__
        return f"{'.' if isinstance(target, MethodCall) else ''}{name}"
    return type(node).__name__


class _Builder:
    """Substitutes children for ChildRefs, names items after them, and records where each child went."""

    def __init__(self, block: Block) -> None:
        self.block = block
        self.placed: dict[str, str] = {}

    def build(self, node: Node, rel: str) -> Node:
        if isinstance(node, ChildRef):
            if "." in node.path:
                raise _Unfit(f"it calls {node.path}, which is not its own child")
            child = self.block.child(node.path)
            if node.path in self.placed:
                if not isinstance(child, Primitive) or child.state():
                    raise _Unfit(f"child {node.path} is called twice and has state")
                return child  # a stateless layer used twice (torchvision's relu) becomes two layers
            self.placed[node.path] = rel
            return child
        if isinstance(node, Activation):
            return replace(node, spelling=Spelling.MODULE)
        if isinstance(node, Primitive):
            return node
        if isinstance(node, Chain):
            names = self._names(node.items)
            return Chain(*(self.build(it, join(rel, n)) for n, it in zip(names, node.items)), names=names)
        if isinstance(node, SkipConnection):
            if _first_inplace(node.body, self.block):
                raise _Unfit("its residual branch starts with an in-place op on the shared input")
            return SkipConnection(self.build(node.body, join(rel, "body")), node.combine)
        if isinstance(node, Parallel):
            if any(_first_inplace(b, self.block) for b in node.branches):
                raise _Unfit("a branch starts with an in-place op on the shared input")
            names = self._names(node.branches)
            return Parallel(tuple(self.build(b, join(rel, n)) for n, b in zip(names, node.branches)),
                            node.combine, names)
        raise _Unfit(f"its forward calls {_what(node)}, which is neither a layer nor a way of joining branches")

    def _names(self, items: tuple[Node, ...]) -> tuple[str, ...]:
        taken: set[str] = set()
        out = []
        for i, it in enumerate(items):
            name = it.path if isinstance(it, ChildRef) and "." not in it.path else unique_name(str(i), taken)
            if name in taken:
                name = unique_name(name, taken)
            taken.add(name)
            out.append(name)
        return tuple(out)


def desugared(block: Block, helpers: Mapping[str, Helper] | None = None) -> tuple[Node, dict[str, str]]:
    """The module-level structure equal to ``block`` and child name -> its path inside it; raises _Unfit.
    ``helpers``: the model's copied functions (whether one returns its input or a new tensor)."""
    graph = _check_graph(block)
    form = recognize(graph, functools.partial(node_at, block), helpers) if isinstance(graph, Graph) else graph
    if isinstance(form, Graph):
        raise _Unfit("its forward is not a chain, skip connection or parallel of its children")
    b = _Builder(block)
    node = b.build(form, "")
    unused = [n for n, _ in block.children if n not in b.placed]
    if unused:
        raise _Unfit(f"children {unused} are not called in its forward")
    return node, b.placed


@dataclass(frozen=True)
class Desugar(MovingPass):
    """Replace each selected Block whose forward is plain structure by that structure.

    Option ``where`` (a selector; default every Block that fits). Keys are renamed (see the report).

    Before/after::

        class Bottleneck(nn.Module): ...        ->   nn.Sequential(SkipConnection(nn.Sequential(conv1, ...)), relu)
    """

    name: ClassVar[str] = "desugar"
    keeps_semantics: ClassVar[bool] = True
    where: str | None = None

    def plan(self, model: Model) -> Moves:
        """The Blocks this pass turns into structure and the Blocks it keeps, and why."""
        sel, enc = parse_selector(self.where), enclosing_map(model.root)
        tied = {p for pair in model.ties for p in pair}
        moves, helpers = Moves(model.root), model.helper_functions()

        def fn(path: str, node: Node) -> Node:
            if not isinstance(node, Block) or not sel(Site(path, node, enc.get(path, ()))):
                return node
            try:
                if any(t == path or t.startswith(join(path, "")) for t in tied):
                    raise _Unfit("its weights are tied to another module")
                new, _ = desugared(node, helpers)  # the children themselves: their state moves with them
            except _Unfit as e:
                moves.skipped.append(Skip(path, f"Block<{node.cls.name}> kept: {e}"))
                return node
            moves.matches.append(Match(path, f"Block<{node.cls.name}> -> {type(new).__name__}", "structure"))
            return new

        moves.root = map_tree(model.root, fn)
        return moves

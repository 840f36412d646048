"""Structure stored: a Block whose forward is only structure keeps that structure as its body.

Capture traces every user module's forward into a Graph. When the Graph is exactly a combinator
tree over the block's children and inline activations (``ir.structure.recognize`` finds one, with
no Graph leaf), the Block stores the tree instead: passes and patterns then see
``SkipConnection(Chain(conv1, bn1, relu, conv2, bn2), add)`` directly, and the emitter lowers it
back (``ir.lower``). Anything else keeps its Graph.

A forward is stored as structure only when the structure says all of it: one positional tensor input
(its name kept: ``Block.input_name``), one tensor result, no guard, the same forward in training and eval,
each child or activation called with just the one value, and every leaf a child (``ChildRef``) or an
inline activation. Names the source gave values (``out``, ``identity``) are not kept; the emitter names
each value after the child that made it. An in-place join (``out += identity``) stays one
(``Combine(in_place=True)``): the result keeps ``out``'s dtype, as in the original.

>>> stored_structure(block).body   # doctest: +SKIP
Chain(SkipConnection(Chain(ChildRef('conv1'), ...), add), Activation(relu))
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace

from torchgraft.ir.graph import ChildCall, Graph, Guard, InputKind, PrimCall
from torchgraft.ir.lower import CAPTURED_METHODS
from torchgraft.ir.model import Helper, HelperKind
from torchgraft.ir.nodes import Block, ChildRef, Node
from torchgraft.ir.primitives import Activation
from torchgraft.ir.structure import leaves, recognize
from torchgraft.ir.traverse import map_tree, node_at
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Ref


def _fits(g: Graph) -> bool:
    """One plain tensor input, one tensor result, no guard, and every child or activation call takes just that one
    value (a structure leaf carries no other argument)."""
    if len(g.inputs) != 1 or g.inputs[0].kind is not InputKind.POSITIONAL or g.inputs[0].default is not None:
        return False
    if not isinstance(g.inputs[0].type, TensorType) or not g.ops or not isinstance(g.ops[-1].type, TensorType):
        return False  # one tensor in, one tensor out: the lowering annotates both as Tensor
    for op in g.ops:
        if isinstance(op.target, Guard):
            return False
        if isinstance(op.target, (ChildCall, PrimCall)) and (op.kwargs or len(op.args) != 1
                                                             or not isinstance(op.args[0], Ref)):
            return False
    return True


def structure_of(block: Block, helpers: Mapping[str, Helper] | None = None) -> Node | None:
    """The combinator tree that computes ``block``'s forward exactly, or None when it has none: the body
    is a Graph that fits (``_fits``), the training forward is the same (or absent), and the tree's leaves
    are the block's children and inline activations only. ``helpers``: the model's copied functions (whether one
    returns a new tensor, for an in-place join after it)."""
    body = block.body
    if (block.method not in CAPTURED_METHODS or not isinstance(body, Graph) or block.train_body not in (None, body)
            or not _fits(body)):
        return None
    form = recognize(body, functools.partial(node_at, block), helpers)
    if isinstance(form, Graph) or not all(isinstance(n, (ChildRef, Activation)) for n in leaves(form)):
        return None
    return form


def stored_structure(root: Node, helpers: Mapping[str, Helper] | None = None) -> Node:
    """``root`` with every Block whose forward is only structure storing that structure as its body
    (``structure_of``), its input name kept in ``Block.input_name``; the other Blocks keep their Graphs.
    ``helpers``: the model's helpers (any kinds, keyed any way); its copied functions are read by name, as
    ``Model.helper_functions`` gives them."""
    functions = {h.name: h for h in (helpers or {}).values() if h.kind is HelperKind.FUNCTION}

    def store(path: str, node: Node) -> Node:
        form = structure_of(node, functions) if isinstance(node, Block) else None
        if form is None or not isinstance(node, Block) or not isinstance(node.body, Graph):
            return node
        return replace(node, body=form, train_body=None, input_name=node.body.inputs[0].name)
    return map_tree(root, store)

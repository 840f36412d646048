"""The structural rule of ``fuse-conv-bn``: ``Chain[..., Conv, BatchNorm, ...]``.

One declarative rule finds the (layer, BatchNorm) pairs of a sequence of items: an ``nn.Sequential``
(a module-level Chain) and every Chain inside a Block's structural body (its items are ``ChildRef``s to the
block's children) alike. An item may end in its layer (``tail``: the last layer of nested Sequentials).

>>> bn_pairs([conv, bn, relu], lambda i: ("", items[i]), lambda p: TensorType(("N", 8)))   # doctest: +SKIP
[0]
"""

from __future__ import annotations

from collections.abc import Callable

from torchgraft.ir.nodes import Chain, Node
from torchgraft.ir.primitives import BatchNorm, Conv, Linear, Primitive
from torchgraft.ir.traverse import join
from torchgraft.ir.types import TensorType, ValueType

Resolve = Callable[[int], "tuple[str, Node] | None"]
"""Item ``i`` of a sequence as (path, module-level node), or None when it is not one the rule may fold
(a call of something other than the block's own child, a child called elsewhere too, a shared layer)."""


def out_features(a: Node) -> int | None:
    """The channels a Conv/Linear makes, None for anything else (or a reparametrized layer: nothing to fold into)."""
    if isinstance(a, Primitive) and a.reparam:
        return None
    if isinstance(a, Conv):
        return a.out_channels
    if isinstance(a, Linear):
        return a.out_features
    return None


def pairable(a: Node, b: Node, out_type: object) -> bool:
    """``b`` is the BatchNorm that folds into ``a`` (dims and channels match; Linear only on 2-D outputs)."""
    if not isinstance(b, BatchNorm) or (isinstance(a, Primitive) and a.reparam):
        return False
    if isinstance(a, Conv):
        return b.op == f"BatchNorm{a.dims}d" and b.num_features == a.out_channels
    if isinstance(a, Linear):
        return (b.op == "BatchNorm1d" and b.num_features == a.out_features
                and isinstance(out_type, TensorType) and out_type.rank == 2)
    return False


def tail(node: Node, path: str) -> tuple[str, Node]:
    """The layer whose output is ``node``'s output, with its path: ``node`` itself, or the last item
    of (nested) ``nn.Sequential``s, e.g. torchvision's ``Conv2Plus1D`` ending in a Conv3d."""
    while isinstance(node, Chain) and node.items:
        path, node = join(path, node.names[-1]), node.items[-1]
    return path, node


def with_tail(node: Node, new: Node) -> Node:
    """``node`` with the layer ``tail`` finds replaced by ``new``."""
    if not isinstance(node, Chain) or not node.items:
        return new
    return Chain(*node.items[:-1], with_tail(node.items[-1], new), names=node.names)


def bn_pairs(n: int, resolve: Resolve, type_at: Callable[[str], ValueType],
             chosen: Callable[[str, Node], bool]) -> list[int]:
    """``Chain[..., Conv, BatchNorm, ...]``: each ``i`` (of ``n`` items) where item ``i`` ends in a Conv/Linear
    whose BatchNorm is item ``i + 1``, and ``chosen(layer path, layer)`` (the ``where=`` selector) holds.
    Pairs do not overlap: a BatchNorm folds into the one layer before it."""
    out: list[int] = []
    for i in range(n - 1):
        if out and out[-1] == i - 1:
            continue
        first, second = resolve(i), resolve(i + 1)
        if first is None or second is None:
            continue
        (pt, a), (_, b) = tail(first[1], first[0]), second
        if pairable(a, b, type_at(first[0])) and chosen(pt, a):
            out.append(i)
    return out


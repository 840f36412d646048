"""``fuse-conv-bn``: fold BatchNorm into the convolution or linear layer before it (inference).

Sites: a Conv1d/2d/3d or ConvTranspose (any groups, with or without bias) followed by
its BatchNorm in an ``nn.Sequential``, or called one after the other in a forward where
the conv's output has no other user. Linear + BatchNorm1d on 2-D activations too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from torchgraft.ir.graph import ChildCall, Graph, Op
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, Node, module_children
from torchgraft.ir.primitives import BatchNorm, Conv, Identity, Linear, Primitive
from torchgraft.ir.traverse import join, map_tree
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Ref, rename_refs
from torchgraft.passes.base import Match, Pass
from torchgraft.passes.selectors import Site, parse_selector


class FuseError(ValueError):
    """A BatchNorm cannot be folded (no running statistics)."""


def fold_weights(layer: Primitive, w: torch.Tensor, b: torch.Tensor | None, stats: dict[str, torch.Tensor],
                 bn: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded (weight, bias): BN(conv(x)) == conv'(x) with running statistics."""
    scale = stats["weight"] if bn.affine else torch.ones_like(stats["running_mean"])
    shift = stats["bias"] if bn.affine else torch.zeros_like(stats["running_mean"])
    inv = scale / torch.sqrt(stats["running_var"] + bn.eps)
    if isinstance(layer, Conv) and layer.transposed:
        g = layer.groups
        shape = w.shape
        w2 = w.reshape(g, shape[0] // g, shape[1], *shape[2:]) * inv.reshape(g, 1, shape[1], *[1] * (w.dim() - 2))
        w2 = w2.reshape(shape)
    else:
        w2 = w * inv.reshape(-1, *[1] * (w.dim() - 1))
    base = b if b is not None else torch.zeros_like(stats["running_mean"])
    return w2.to(w.dtype), ((base - stats["running_mean"]) * inv + shift).to(w.dtype)


def _pairable(a: Node, b: Node, out_type: object) -> bool:
    if not isinstance(b, BatchNorm):
        return False
    if isinstance(a, Conv):
        return b.op == f"BatchNorm{a.dims}d" and b.num_features == a.out_channels
    if isinstance(a, Linear):
        return (b.op == "BatchNorm1d" and b.num_features == a.out_features
                and isinstance(out_type, TensorType) and out_type.rank == 2)
    return False


@dataclass(frozen=True)
class FuseConvBN(Pass):
    """Fold every BatchNorm into the Conv/Linear feeding it. Produces an inference model.

    The folded BatchNorm disappears (inside an ``nn.Sequential`` it becomes ``nn.Identity``
    so later indices keep their keys; run ``eliminate-identity`` to drop those); the conv
    gains a bias. BatchNorm without running statistics is refused with an error.

    Before/after::

        nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        ->  nn.Sequential(nn.Conv2d(3, 16, 3), nn.Identity(), nn.ReLU())
    """

    name: ClassVar[str] = "fuse-conv-bn"
    where: str | None = None

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        state = dict(model.weights)
        matches: list[Match] = []
        sel = parse_selector(self.where)

        def fuse(path: str, node: Node) -> Node:
            if isinstance(node, Chain):
                return self._chain(model, path, node, state, matches, sel)
            if isinstance(node, Block):
                return self._block(model, path, node, state, matches, sel)
            return node

        root = map_tree(model.root, fuse)
        return replace(model, root=root, weights=state), matches

    def _fold(self, model: Model, conv_path: str, bn_path: str, conv: Primitive, bn: BatchNorm,
              state: dict[str, torch.Tensor], matches: list[Match]) -> Primitive:
        if not bn.track_running_stats or join(bn_path, "running_mean") not in state:
            raise FuseError(f"fuse-conv-bn: BatchNorm at {bn_path} has no running statistics "
                            "(track_running_stats=False), so it depends on the batch and cannot be folded. "
                            f"Exclude it with where=, e.g. fuse-conv-bn{{where=kind:{conv.op}}} on other paths.")
        stats = {k: state.pop(join(bn_path, k)) for k in ("weight", "bias", "running_mean", "running_var")
                 if join(bn_path, k) in state}
        state.pop(join(bn_path, "num_batches_tracked"), None)
        bias_key = join(conv_path, "bias")
        w, b = fold_weights(conv, state[join(conv_path, "weight")], state.get(bias_key), stats, bn)
        state[join(conv_path, "weight")], state[bias_key] = w, b
        matches.append(Match(conv_path, f"{conv.op} + {bn.op} at {bn_path}"))
        return replace(conv, bias=True)  # type: ignore[type-var]

    def _chain(self, model: Model, path: str, chain: Chain, state: dict[str, torch.Tensor],
               matches: list[Match], sel: object) -> Node:
        items = list(chain.items)
        for i in range(len(items) - 1):
            a, b = items[i], items[i + 1]
            pa, pb = join(path, chain.names[i]), join(path, chain.names[i + 1])
            if _pairable(a, b, model.type_at(pa)) and sel(Site(pa, a)):  # type: ignore[operator]
                items[i] = self._fold(model, pa, pb, a, b, state, matches)  # type: ignore[arg-type]
                items[i + 1] = Identity()
        return chain if items == list(chain.items) else Chain(*items, names=chain.names)

    def _block(self, model: Model, path: str, block: Block, state: dict[str, torch.Tensor],
               matches: list[Match], sel: object) -> Node:
        graphs = [g for g in (block.body, block.train_body) if isinstance(g, Graph)]
        if not graphs:
            return block
        calls: dict[str, int] = {}
        for g in graphs:
            for op in g.ops:
                if isinstance(op.target, ChildCall):
                    calls[op.target.path] = calls.get(op.target.path, 0) + 1
        per_graph = len(graphs)
        pairs = []
        for op, nxt in _child_pairs(graphs[0]):
            pa, pb = op.target.path, nxt.target.path  # type: ignore[union-attr]
            kids = dict(module_children(block))
            a, b = kids.get(pa), kids.get(pb)
            if a is None or b is None or calls[pa] != per_graph or calls[pb] != per_graph:
                continue
            if _pairable(a, b, _op_type(op)) and sel(Site(join(path, pa), a)):  # type: ignore[operator]
                pairs.append((pa, pb, nxt.name, op.name))
        if not pairs:
            return block
        children = dict(block.children)
        renames = {}
        for pa, pb, bn_op, conv_op in pairs:
            children[pa] = self._fold(model, join(path, pa), join(path, pb), children[pa], children[pb],  # type: ignore[arg-type]
                                      state, matches)
            del children[pb]
            renames[bn_op] = conv_op
        new_kids = tuple((n, children[n]) for n, _ in block.children if n in children)
        body, train = (_drop_ops(g, renames) if isinstance(g, Graph) else g for g in (block.body, block.train_body))
        return replace(block, children=new_kids, body=body, train_body=train)


def _op_type(op: Op) -> object:
    return op.type


def _child_pairs(g: Graph) -> list[tuple[Op, Op]]:
    users = g.users()
    by_name = {op.name: op for op in g.ops}
    out = []
    for op in g.ops:
        if not isinstance(op.target, ChildCall) or "." in op.target.path:
            continue
        u = users.get(op.name, [])
        if len(u) == 1 and u[0] in by_name:
            nxt = by_name[u[0]]
            if (isinstance(nxt.target, ChildCall) and "." not in nxt.target.path and len(nxt.args) == 1
                    and nxt.args[0] == Ref(op.name) and not nxt.kwargs):
                out.append((op, nxt))
    return out


def _drop_ops(g: Graph, renames: dict[str, str]) -> Graph:
    ops = []
    for op in g.ops:
        if op.name in renames:
            continue
        ops.append(replace(op, args=tuple(rename_refs(a, renames) for a in op.args),
                           kwargs=tuple((k, rename_refs(v, renames)) for k, v in op.kwargs)))
    return Graph(g.inputs, tuple(ops), rename_refs(g.output, renames))

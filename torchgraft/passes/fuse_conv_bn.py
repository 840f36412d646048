"""``fuse-conv-bn``: fold BatchNorm into the convolution or linear layer before it (inference).

Sites:

- a Conv1d/2d/3d or ConvTranspose (any groups, with or without bias) followed by its
  BatchNorm in an ``nn.Sequential`` (the conv may be the last layer of an inner ``nn.Sequential``);
- the same two layers called one after the other in a forward: in a structural body (a forward
  capture stored as structure, ``ir.stored``) by the same rule as in an ``nn.Sequential``,
  ``Chain[..., Conv, BatchNorm, ...]`` over the block's children (``passes.conv_bn_rule``); in a
  Graph body, where the conv's output has no other user;
- a conv child whose only user is a functional ``F.batch_norm(y, self.running_mean,
  self.running_var, self.weight, self.bias, training, momentum, eps)`` over the block's
  own buffers/parameters (``training`` False, or ``self.training``: see below);
- Linear + BatchNorm1d (module or functional) on 2-D activations.

The result is an inference model: after folding, training mode no longer normalises with
batch statistics. A functional site whose ``training`` argument is ``self.training`` is
folded too (the report's notes list it); one with ``training=True`` is left alone.

Layers reachable under two names (a shared module, tied weights) are never folded: the
fold would change every place that uses them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from torchgraft.errors import TorchgraftError
from torchgraft.ir.graph import ChildCall, Graph
from torchgraft.ir.lower import is_structural, leaf_sites, map_chains
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, module_children
from torchgraft.ir.primitives import BatchNorm, Conv, Identity, Linear, Primitive
from torchgraft.ir.traverse import join, map_tree
from torchgraft.ir.types import TensorType
from torchgraft.passes.base import Match, Pass, Skip
from torchgraft.passes.conv_bn_rule import bn_pairs, out_features, pairable, tail, with_tail
from torchgraft.passes.fuse_conv_bn_graph import child_pairs, drop_ops, functional_sites
from torchgraft.passes.rewrite import enclosing_map
from torchgraft.passes.selectors import Selector, Site, parse_selector

_TRAINING_NOTE = "training=self.training"


class FuseError(TorchgraftError, ValueError):
    """A BatchNorm cannot be folded (no running statistics)."""


def fold_weights(layer: Primitive, w: torch.Tensor, b: torch.Tensor | None, stats: dict[str, torch.Tensor],
                 bn: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded (weight, bias): BN(conv(x)) == conv'(x) with running statistics.

    ``stats`` holds ``running_mean``, ``running_var`` and, when ``bn.affine``, ``weight`` and ``bias``.
    """
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


def _tied(model: Model) -> set[str]:
    """Every path (module or state key) that is an alias or the target of a tie."""
    return {p for pair in model.ties for p in pair}


def _is_tied(path: str, tied: set[str]) -> bool:
    return any(path == t or path.startswith(t + ".") or t.startswith(path + ".") for t in tied)


def _frozen_after(model: Model, state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The frozen keys after folding: a bias the fold added is frozen when its layer's weight is.

    The folded BatchNorm's keys are gone (``Model`` drops them); the layer keeps its own flags.
    """
    added = [k.rpartition(".")[0] for k in state if k not in model.weights and k.rpartition(".")[2] == "bias"]
    return model.frozen + tuple(join(layer, "bias") for layer in added if join(layer, "weight") in model.frozen)


@dataclass(frozen=True)
class FuseConvBN(Pass):
    """Fold every BatchNorm into the Conv/Linear feeding it. Produces an inference model.

    Folds BatchNorm modules after a Conv/ConvTranspose (any groups, with or without bias) in an
    ``nn.Sequential`` or called right after it in a forward, functional ``F.batch_norm`` over a
    block's own buffers (``training`` False or ``self.training``), and Linear + BatchNorm1d on 2-D
    inputs. The folded BatchNorm disappears (inside an ``nn.Sequential`` it becomes
    ``nn.Identity`` so later indices keep their keys; run ``eliminate-identity`` to drop
    those); the conv gains a bias. A conv whose output has another user, and shared (tied)
    layers, are left alone; the report's ``skipped`` lists every BatchNorm left in the model and
    why. BatchNorm without running statistics is refused with an error.

    Options: ``where`` (a selector over the conv/linear layers).

    Before/after::

        nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        ->  nn.Sequential(nn.Conv2d(3, 16, 3), nn.Identity(), nn.ReLU())
    """

    name: ClassVar[str] = "fuse-conv-bn"
    where: str | None = None

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        state = dict(model.weights)
        consts = dict(model.constants)
        matches: list[Match] = []
        sel = parse_selector(self.where)
        enclosing = enclosing_map(model.root)
        tied = _tied(model)

        def fuse(path: str, node: Node) -> Node:
            if isinstance(node, Chain):
                return self._chain(model, path, node, state, matches, sel, enclosing, tied)
            if isinstance(node, Block):
                return self._block(model, path, node, state, consts, matches, sel, enclosing, tied)
            return node

        root = map_tree(model.root, fuse)
        if not matches:
            return model, matches
        return replace(model, root=root, weights=state, constants=consts,
                       frozen=_frozen_after(model, state)), matches

    def notes(self, model: Model) -> list[str]:
        """What the report should say besides the sites: ``self.training`` sites folded."""
        dynamic = [m.path for m in self.rewrite(model)[1] if _TRAINING_NOTE in m.what]
        if not dynamic:
            return []
        return [f"F.batch_norm with training=self.training folded at {', '.join(dynamic)}: in training mode "
                "these now use the running statistics too (the pass produces an inference model)"]

    def skipped(self, before: Model, after: Model) -> list[Skip]:
        """Every BatchNorm (module, ``F.batch_norm`` call, or state of an opaque module) still in
        ``after``, with why it was not folded (see ``fuse_conv_bn_skips``)."""
        from torchgraft.passes.fuse_conv_bn_skips import skipped_sites  # it imports this module

        sel, enclosing, tied = parse_selector(self.where), enclosing_map(before.root), _tied(before)
        return skipped_sites(before, after, lambda p, n: self._selected(sel, p, n, enclosing),
                             lambda p: _is_tied(p, tied))

    @staticmethod
    def _selected(sel: Selector, path: str, node: Node, enclosing: dict[str, tuple[str, ...]]) -> bool:
        return sel(Site(path, node, enclosing.get(path, ())))

    @staticmethod
    def _fold_tensors(conv_path: str, conv: Primitive, bn: BatchNorm, stats: dict[str, torch.Tensor],
                      state: dict[str, torch.Tensor]) -> Primitive:
        bias_key = join(conv_path, "bias")
        w, b = fold_weights(conv, state[join(conv_path, "weight")], state.get(bias_key), stats, bn)
        state[join(conv_path, "weight")], state[bias_key] = w, b
        return replace(conv, bias=True)  # type: ignore[call-arg, type-var]

    def _fold(self, conv_path: str, bn_path: str, conv: Primitive, bn: BatchNorm,
              state: dict[str, torch.Tensor], matches: list[Match]) -> Primitive:
        if not bn.track_running_stats or join(bn_path, "running_mean") not in state:
            raise FuseError(f"fuse-conv-bn: the {bn.op} at {bn_path} (after {conv.op} {conv_path}) has no running "
                            "statistics (track_running_stats=False): it normalises with each batch's statistics, "
                            "so it cannot be folded into a fixed weight. Leave it out with a where= selector that "
                            f"does not select {conv_path}, e.g. where=~{conv_path}")
        stats = {k: state.pop(join(bn_path, k)) for k in ("weight", "bias", "running_mean", "running_var")
                 if join(bn_path, k) in state}
        state.pop(join(bn_path, "num_batches_tracked"), None)
        matches.append(Match(conv_path, f"{conv.op} + {bn.op} at {bn_path}"))
        return self._fold_tensors(conv_path, conv, bn, stats, state)

    def _chain(self, model: Model, path: str, chain: Chain, state: dict[str, torch.Tensor],
               matches: list[Match], sel: Selector, enclosing: dict[str, tuple[str, ...]], tied: set[str]) -> Node:
        """``Chain[..., Conv, BatchNorm, ...]`` in an ``nn.Sequential``: the BatchNorm becomes ``nn.Identity``
        (later indices keep their keys)."""
        def resolve(i: int) -> tuple[str, Node] | None:
            p = join(path, chain.names[i])
            return None if _is_tied(p, tied) else (p, chain.items[i])

        items = list(chain.items)
        for i in bn_pairs(len(items), resolve, model.type_at, lambda p, n: self._selected(sel, p, n, enclosing)):
            pt, a = tail(items[i], join(path, chain.names[i]))
            bn = items[i + 1]
            assert isinstance(bn, BatchNorm)
            items[i] = with_tail(items[i], self._fold(pt, join(path, chain.names[i + 1]), a, bn, state, matches))  # type: ignore[arg-type]
            items[i + 1] = Identity()
        return chain if items == list(chain.items) else Chain(*items, names=chain.names)

    def _structure(self, model: Model, path: str, block: Block, state: dict[str, torch.Tensor],
                   matches: list[Match], sel: Selector, enclosing: dict[str, tuple[str, ...]], tied: set[str]
                   ) -> Block:
        """``Chain[..., Conv, BatchNorm, ...]`` over the block's children in its structural body: the BatchNorm
        child and its call go (each child called once in the body, neither shared)."""
        calls = Counter(n.path for _, n in leaf_sites(block.body) if isinstance(n, ChildRef))
        kids = dict(block.children)
        gone: set[str] = set()

        def chain(items: tuple[Node, ...]) -> list[Node]:
            def resolve(i: int) -> tuple[str, Node] | None:
                ref = items[i]
                if not isinstance(ref, ChildRef) or ref.path not in kids or calls[ref.path] != 1:
                    return None
                p = join(path, ref.path)
                return None if _is_tied(p, tied) else (p, kids[ref.path])

            out = list(items)
            for i in bn_pairs(len(items), resolve, model.type_at, lambda p, n: self._selected(sel, p, n, enclosing)):
                conv, bn = items[i], items[i + 1]
                assert isinstance(conv, ChildRef) and isinstance(bn, ChildRef)
                pt, a = tail(kids[conv.path], join(path, conv.path))
                folded = self._fold(pt, join(path, bn.path), a, kids[bn.path], state, matches)  # type: ignore[arg-type]
                kids[conv.path] = with_tail(kids[conv.path], folded)
                gone.add(bn.path)
            return [it for it in out if not (isinstance(it, ChildRef) and it.path in gone)]

        body = map_chains(block.body, chain)
        if not gone:
            return block
        return replace(block, body=body, children=tuple((n, kids[n]) for n, _ in block.children if n not in gone))

    def _block(self, model: Model, path: str, block: Block, state: dict[str, torch.Tensor],
               consts: dict[str, torch.Tensor], matches: list[Match], sel: Selector,
               enclosing: dict[str, tuple[str, ...]], tied: set[str]) -> Node:
        if is_structural(block.body) and block.train_body is None:
            return self._structure(model, path, block, state, matches, sel, enclosing, tied)
        graphs = [g for g in (block.body, block.train_body) if isinstance(g, Graph)]
        if not graphs:
            return block
        calls = Counter(op.target.path for g in graphs for op in g.ops if isinstance(op.target, ChildCall))
        per_graph = len(graphs)
        kids = dict(module_children(block))

        def usable(child: str) -> bool:
            return calls[child] == per_graph and not _is_tied(join(path, child), tied)

        # module pairs conv -> bn, present (once) in every graph of the block
        pair_sets = [{(a.target.path, b.target.path): (a, b) for a, b in child_pairs(g)} for g in graphs]  # type: ignore[union-attr]
        pairs = []
        for (pa, pb), (op, _) in pair_sets[0].items():
            a, b = kids.get(pa), kids.get(pb)
            if (a is None or b is None or not all((pa, pb) in s for s in pair_sets[1:])
                    or not usable(pa) or not usable(pb)):
                continue
            pt, a = tail(a, join(path, pa))
            if pairable(a, b, op.type) and self._selected(sel, pt, a, enclosing):
                pairs.append((pa, pb))
        # functional F.batch_norm over the block's own state, the same in every graph
        site_sets = [{s.key: s for s in functional_sites(g, block)} for g in graphs]
        fn_sites = []
        for key, site in site_sets[0].items():
            conv = kids.get(site.conv)
            if (conv is None or not all(key in s for s in site_sets[1:]) or not usable(site.conv)
                    or any(_is_tied(join(path, n), tied) for _, n in site.attrs if n)):
                continue
            n = out_features(conv)
            mean = dict(site.attrs)["running_mean"]
            spec = next(s for s in block.state if s.name == mean)
            if n is None or spec.shape != (n,):
                continue
            conv_type = next(op.type for op in graphs[0].ops if op.name == site.conv_op)
            if isinstance(conv, Linear) and not (isinstance(conv_type, TensorType) and conv_type.rank == 2):
                continue
            if self._selected(sel, join(path, site.conv), conv, enclosing):
                fn_sites.append(key)
        if not pairs and not fn_sites:
            return block

        children = dict(block.children)
        renames: list[dict[str, str]] = [{} for _ in graphs]
        drops: list[set[str]] = [set() for _ in graphs]
        gone_state: set[str] = set()
        for pa, pb in pairs:
            pt, conv = tail(children[pa], join(path, pa))
            children[pa] = with_tail(children[pa], self._fold(pt, join(path, pb), conv, children[pb],  # type: ignore[arg-type]
                                                               state, matches))
            del children[pb]
            for i in range(len(graphs)):
                conv_op, bn_op = pair_sets[i][(pa, pb)]
                renames[i][bn_op.name] = conv_op.name
        for key in fn_sites:
            site = site_sets[0][key]
            conv = children[site.conv]
            assert isinstance(conv, (Conv, Linear))
            stats = {}
            for role, name in site.attrs:
                if name is not None:
                    k = join(path, name)
                    stats[role] = state.pop(k) if k in state else consts.pop(k)
                    gone_state.add(name)
            ones = torch.ones_like(stats["running_mean"])
            stats.setdefault("weight", ones)
            stats.setdefault("bias", torch.zeros_like(ones))
            bn = BatchNorm("BatchNorm1d", int(ones.numel()), eps=site.eps)
            children[site.conv] = self._fold_tensors(join(path, site.conv), conv, bn, stats, state)
            call = f"F.batch_norm({_TRAINING_NOTE})" if site.dynamic else "F.batch_norm"
            matches.append(Match(join(path, site.conv), f"{conv.op} + {call} at {join(path, site.bn_op)}",
                                 "functional"))
            for i in range(len(graphs)):
                s = site_sets[i][key]
                renames[i][s.bn_op] = s.conv_op
                drops[i] |= set(s.attr_ops)
        new_kids = tuple((n, children[n]) for n, _ in block.children if n in children)
        new_graphs = iter([drop_ops(g, renames[i], drops[i]) for i, g in enumerate(graphs)])
        body = next(new_graphs) if isinstance(block.body, Graph) else block.body
        train = next(new_graphs) if isinstance(block.train_body, Graph) else block.train_body
        return replace(block, children=new_kids, body=body, train_body=train,
                       state=tuple(s for s in block.state if s.name not in gone_state))

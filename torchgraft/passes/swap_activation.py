"""``swap-activation``: replace one activation by another at every site and in every spelling."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torchgraft.ir.activations import ActKind
from torchgraft.ir.graph import ChildCall, Graph, MethodCall, Op, PrimCall, renamed
from torchgraft.ir.lower import block_graph, is_structural
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, Node
from torchgraft.ir.primitives import Activation, TorchLayer, torch_defaults
from torchgraft.ir.traverse import join, map_tree
from torchgraft.ir.values import Ref
from torchgraft.passes.base import Match, Pass
from torchgraft.passes.rewrite import fmap, rename_children
from torchgraft.passes.selectors import Site, parse_selector
from torchgraft.passes.swap_types import SiteTypes


def _rename_values(g: Node | None, old: str, new: str) -> Node | None:
    """Graph values named after the old activation (``relu_1``) take the new name, kept unique."""
    if not isinstance(g, Graph):
        return g
    taken = {i.name for i in g.inputs} | {op.name for op in g.ops}
    ren = {}
    for op in g.ops:
        if old in op.name and isinstance(op.target, PrimCall):
            cand = op.name.replace(old, new)
            while cand in taken:
                cand += "_"
            ren[op.name] = cand
            taken.add(cand)
    return renamed(g, ren) if ren else g


def _write_back_in_place(path: str, node: Node) -> Node:
    """Calls of in-place activation modules whose new kind has no ``inplace`` (``nn.GELU``) become
    ``x.copy_(self.act(x))`` where ``x`` is read again, so the mutation the original relied on stays."""
    if not isinstance(node, Block) or not isinstance(node.body, Graph) and not is_structural(node.body):
        return node
    lost = {n for n, c in node.children if isinstance(c, Activation) and c.inplace and "inplace" not in
            torch_defaults(c.op)}
    if not lost:
        return node
    body = _copy_back(node, node.body, lost)
    train = _copy_back(node, node.train_body, lost) if node.train_body is not None else None
    return replace(node, body=body, train_body=train)


def _copy_back(block: Block, body: Node, lost: set[str]) -> Node:
    """``body`` (of ``block``) with the write-backs; a structural body is lowered (``ir.lower``) only when it
    needs one."""
    g = block_graph(block, body)
    if not isinstance(g, Graph):
        return body
    new = _copied(g, lost)
    return body if new == g else new


def _copied(g: Graph, lost: set[str]) -> Graph:
    users = g.users()
    ops: list[Op] = []
    for op in g.ops:
        arg = op.args[0] if op.args else None
        if (isinstance(op.target, ChildCall) and op.target.path in lost and isinstance(arg, Ref)
                and len(users.get(arg.name, [])) > 1):
            ops.append(replace(op, name=op.name + "_out"))
            ops.append(Op(op.name, MethodCall("copy_"), (arg, Ref(op.name + "_out")), type=op.type))
        else:
            ops.append(op)
    return Graph(g.inputs, tuple(ops), g.output)


_NAMED = ("relu", "gelu")  # the activations nn.Transformer* layers take by name


@dataclass(frozen=True)
class SwapActivation(Pass):
    """Swap every ``from`` activation for ``to``: modules (``nn.ReLU``), ``F.relu``, ``torch.relu``,
    ``x.relu()`` and in-place forms alike. In-place sites stay in-place.

    Options: ``from`` and ``to`` (relu, relu6, leaky_relu, gelu, silu, hardswish, hardsigmoid,
    sigmoid, tanh, elu, mish, ...), ``where`` (a selector), and the new activation's own
    options: ``negative_slope`` (leaky_relu), ``approximate`` (gelu: none/tanh), ``alpha`` (elu).

    Before/after::

        self.relu = nn.ReLU(inplace=True)    ->   self.relu = nn.SiLU(inplace=True)
        return F.relu(out + x)               ->   return F.silu(out + x)
    """

    name: ClassVar[str] = "swap-activation"
    keeps_semantics: ClassVar[bool] = False
    keeps_state: ClassVar[bool] = True  # activations swapped hold no state; renamed children are stateless
    from_: str = "relu"
    to: str = "silu"
    where: str | None = None
    negative_slope: float | None = None
    approximate: str | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        ActKind.parse(self.from_)  # unknown names fail here, naming the known ones
        ActKind.parse(self.to)

    def _new(self, old: Activation) -> Activation:
        kind = ActKind.parse(self.to)
        given = {"negative_slope": self.negative_slope, "approximate": self.approximate, "alpha": self.alpha}
        opts: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        bad = set(opts) - set(kind.options)
        if bad:
            raise ValueError(f"swap-activation: {kind.functional} has no option(s) {sorted(bad)}; "
                             f"it takes {sorted(kind.options) or 'none'}")
        return Activation.of(kind, inplace=old.inplace, spelling=old.spelling, **opts)

    def _layer_args(self, layer: TorchLayer, src: ActKind) -> TorchLayer:
        """A layer that takes its activation as an argument (``nn.TransformerEncoderLayer(activation="relu")``),
        nested layers included, with ``src`` swapped: a name where torch takes one (relu, gelu), else the module."""
        args = []
        for k, v in layer.args:
            if isinstance(v, TorchLayer):
                v = self._layer_args(v, src)
            elif k == "activation" and (v == src.functional or (isinstance(v, Activation) and v.kind is src)):
                new = self._new(v if isinstance(v, Activation) else Activation.of(src))
                v = new.kind.functional if new.kind.functional in _NAMED and not new.options else new
            args.append((k, v))
        return replace(layer, args=tuple(args))

    def types_kept(self, matches: list[Match]) -> bool:
        """Every site was proven to keep its types (``swap_types.SiteTypes``): ``passes.run`` carries them over."""
        return all(m.keeps_types for m in matches)

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        src = ActKind.parse(self.from_)
        dst = ActKind.parse(self.to)
        sel = parse_selector(self.where)
        matches: list[Match] = []
        made: dict[tuple[bool, str], Activation] = {}  # one new (immutable) inline call per in-place/spelling
        proof = SiteTypes(model, dst)

        finish = [False]  # whether _finish has anything to do (see _needs_finish)

        def fn(site: Site, spelling: str) -> Node | None:
            node = site.node
            if not finish[0]:
                finish[0] = _needs_finish(site, src, dst)
            if isinstance(node, Activation):
                if node.kind is not src or not sel(site):
                    return None
                matches.append(Match(site.path, node.kind.functional + (" in-place" if node.inplace else ""),
                                     spelling, keeps_types=proof.keeps(site)))
                if spelling == "module":  # a module keeps an object of its own (``ownership.follow`` pairs by identity)
                    return self._new(node)
                key = (node.inplace, node.spelling.value)
                new = made.get(key)
                if new is None:
                    new = made[key] = self._new(node)
                return new
            if isinstance(node, TorchLayer) and _takes(node, src) and sel(site):
                new_layer = self._layer_args(node, src)
                if new_layer != node:
                    matches.append(Match(site.path, f"{src.functional} (activation= of nn.{node.op})", spelling))
                    return new_layer
            return None

        changed = fmap(model, fn)
        if not matches:
            return model, matches
        return (self._finish(changed, src, dst) if finish[0] else changed), matches

    @staticmethod
    def _finish(model: Model, src: ActKind, dst: ActKind) -> Model:
        """Write-backs for in-place modules that lost ``inplace`` (``_write_back_in_place``), then children named
        after the old activation (``self.relu``) take the new one's name (``self.silu``), their recorded types
        following them; one walk."""
        old, new = src.functional, dst.functional
        moved: dict[str, str] = {}

        def fn(path: str, node: Node) -> Node:
            node = _write_back_in_place(path, node)
            if old == new:
                return node
            if isinstance(node, Chain):
                return _rename_chain(node, path, old, new, dst, moved)
            if not isinstance(node, Block):
                return node
            taken: set[str] | None = None
            renames: dict[str, str] = {}
            for n, c in node.children:
                if isinstance(c, Activation) and c.kind is dst and old in n and not c.state():
                    if taken is None:
                        taken = {n for n, _ in node.children} | {s.name for s in node.state}
                    candidate = n.replace(old, new)
                    if candidate not in taken and candidate.isidentifier():
                        renames[n] = candidate
                        moved[join(path, n)] = join(path, candidate)
                        taken.add(candidate)
            node = rename_children(node, renames)
            body = _rename_values(node.body, old, new)
            train = _rename_values(node.train_body, old, new)
            if body is node.body and train is node.train_body:
                return node
            assert body is not None
            return replace(node, body=body, train_body=train)

        root = map_tree(model.root, fn)
        if moved:
            types = tuple(sorted((moved.get(p, p), t) for p, t in model.types))
            return model.with_root(root, types=types)
        return model if root is model.root else model.with_root(root)


def _needs_finish(site: Site, src: ActKind, dst: ActKind) -> bool:
    """Whether ``site`` may give ``SwapActivation._finish`` work: an activation module named after the old kind or
    in-place (renamed, written back), or a call in a Graph body named after the old kind (its value is renamed).
    An inline call in a combinator body (``Chain(ChildRef("linear"), F.relu)``) never does. Every primitive is a
    site, so a rewrite that saw no such site skips the walk."""
    node, parent = site.node, site.parent
    named = src.functional in site.path.rpartition(".")[2]
    if isinstance(parent, Block) and not any(c is node for _, c in parent.children):
        return named and (isinstance(parent.body, Graph) or isinstance(parent.train_body, Graph))
    if not isinstance(node, Activation):
        return False
    return node.inplace or (named and node.kind in (src, dst))


def _takes(layer: TorchLayer, src: ActKind) -> bool:
    """Whether ``layer`` (or a layer nested in its arguments) takes ``src`` as its ``activation=``."""
    for k, v in layer.args:
        if isinstance(v, TorchLayer) and _takes(v, src):
            return True
        if k == "activation" and (v == src.functional or (isinstance(v, Activation) and v.kind is src)):
            return True
    return False


def _rename_chain(node: Chain, path: str, old: str, new: str, dst: ActKind, moved: dict[str, str]) -> Chain:
    """A Chain's activation items named after the old activation take the new name (``moved`` records them)."""
    names = list(node.names)
    present: Counter[str] | None = None  # what ``names`` holds now: membership without a scan per item
    for i, (n, c) in enumerate(node.named()):
        if isinstance(c, Activation) and c.kind is dst and old in n:
            if present is None:
                present = Counter(names)
            cand = n.replace(old, new)
            if not present[cand]:
                names[i] = cand
                present[n] -= 1
                present[cand] += 1
                moved[join(path, n)] = join(path, cand)
    return Chain(*node.items, names=tuple(names)) if tuple(names) != node.names else node

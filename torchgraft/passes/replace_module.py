"""``replace-module``: swap selected modules for others, carrying over the weights that still apply.

Built-in swaps (``from``/``to`` in a pipeline):

- ``to=groupnorm`` (from BatchNorm): ``nn.GroupNorm(g, C)`` with ``g`` the largest divisor of
  ``C`` not above ``groups`` (default 32); ``weight``/``bias`` carried, running statistics and
  ``num_batches_tracked`` removed. **Changes what the model computes** (statistics come from
  each sample, not the dataset): fine-tune afterwards.
- ``to=frozenbatchnorm`` (from BatchNorm): a ``FrozenBatchNorm2d`` Block (as
  ``torchvision.ops.FrozenBatchNorm2d``): buffers ``weight``, ``bias``, ``running_mean``,
  ``running_var`` under the same keys (``num_batches_tracked`` removed) and
  ``x * scale + shift``. Equal to the BatchNorm in eval mode; in training mode it stays frozen.
- ``to=identity``: ``nn.Identity`` (the module's state is removed).
- ``from=<activation> to=<activation>`` (``relu``, ``gelu``, ``silu``, ...): activation *modules*
  only; ``swap-activation`` also rewrites ``F.relu``/``torch.relu``/``x.relu()``.

``from`` names what to replace: a torch layer (``batchnorm2d``), a primitive family
(``batchnorm`` for all of BatchNorm1d/2d/3d), an activation, or an original class
(``Bottleneck``); case does not matter. ``where`` narrows it with a selector.

In Python, ``ReplaceModule(where=..., factory=fn)`` replaces each selected module with what
``fn(site, tensors)`` returns: ``(new_node, new_tensors)``, or None to keep the module (and look
inside it). ``tensors`` are the module's state_dict entries with keys relative to it
(``"weight"``, ``"0.bias"``); the new tensors must be exactly the state the new node implies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from torchgraft.errors import TorchgraftError
from torchgraft.ir.activations import ActKind
from torchgraft.ir.graph import FunctionCall, GetAttr, Graph, Input, MethodCall, Op
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, ClassRef, Container, Node, Opaque, StateSpec, module_children
from torchgraft.ir.primitives import Activation, BatchNorm, GroupNorm, Identity, Primitive, torch_defaults
from torchgraft.ir.traverse import join, walk, with_children
from torchgraft.ir.types import UNKNOWN, TensorType, ValueType
from torchgraft.ir.values import Const, Ref
from torchgraft.passes.base import Match, Pass
from torchgraft.passes.selectors import Site, enclosing_label, parse_selector

Tensors = dict[str, torch.Tensor]
Factory = Callable[[Site, Tensors], tuple[Node, Tensors] | None]
"""``fn(site, tensors) -> (new_node, new_tensors)`` or None to keep the module; keys relative to it."""

BUILTIN_TARGETS = ("groupnorm", "frozenbatchnorm", "identity")


class ReplaceError(TorchgraftError, ValueError):
    """A replacement cannot be built (bad options, a module the swap does not apply to, bad factory output)."""


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace("_", "")


def _activation(name: str | None) -> ActKind | None:
    if name is None:
        return None
    try:
        return ActKind.parse(name)
    except ValueError:
        return None


def _names(node: Node) -> set[str]:
    """The names ``from`` may use for ``node`` (compared without case, dashes or underscores)."""
    if isinstance(node, Primitive):
        out = {node.op, type(node).__name__}
        if isinstance(node, BatchNorm):
            out.add("bn")
        return {_key(n) for n in out}
    if isinstance(node, (Block, Opaque)):
        return {_key(node.cls.name), _key(node.cls.qualname), _key(str(node.cls))}
    if isinstance(node, Chain):
        return {"chain", "sequential"}
    if isinstance(node, Container):
        return {_key(node.kind)}
    return {_key(type(node).__name__)}


def groupnorm_for(bn: BatchNorm, tensors: Tensors, groups: int = 32) -> tuple[GroupNorm, Tensors]:
    """``nn.GroupNorm`` replacing ``bn``: the largest group count <= ``groups`` dividing C; affine carried."""
    c = bn.num_features
    g = max(d for d in range(1, min(groups, c) + 1) if c % d == 0)
    kept: Tensors = {k: tensors[k] for k in ("weight", "bias") if bn.affine and k in tensors}
    return GroupNorm("GroupNorm", g, c, bn.eps, bn.affine), kept


def frozen_batchnorm_for(bn: BatchNorm, tensors: Tensors, rank: int | None = None,
                         in_type: ValueType = UNKNOWN) -> tuple[Block, Tensors]:
    """A ``FrozenBatchNorm{n}d`` Block computing eval-mode ``bn`` as ``x * scale + shift``.

    ``rank`` is the input's number of dims (4 for BatchNorm2d, 5 for 3d; needed for 1d).
    """
    dims = int(bn.op[-2])
    rank = rank if rank is not None else (dims + 2 if dims > 1 else None)
    if rank is None or rank < 2:
        raise ReplaceError(f"frozenbatchnorm: the input rank of this {bn.op} is unknown (it may be (N, C) or "
                           "(N, C, L)); capture with example inputs so the model is typed")
    if not bn.track_running_stats:
        raise ReplaceError(f"frozenbatchnorm: this {bn.op} has no running statistics (track_running_stats=False), "
                           "so there is nothing to freeze")
    if "running_mean" not in tensors or "running_var" not in tensors or (bn.affine and "weight" not in tensors):
        raise ReplaceError(f"frozenbatchnorm: the model holds no tensors for this {bn.op} (got {sorted(tensors)}); "
                           "freezing needs its running statistics")
    mean = tensors["running_mean"]
    c = bn.num_features
    state = {
        "weight": tensors["weight"] if bn.affine else torch.ones_like(mean),
        "bias": tensors["bias"] if bn.affine else torch.zeros_like(mean),
        "running_mean": mean,
        "running_var": tensors["running_var"],
    }
    dtype = str(mean.dtype).removeprefix("torch.")
    vec = TensorType((c,), dtype)
    shape = (1, -1) + (1,) * (rank - 2)
    ops = (
        Op("weight", GetAttr("weight"), type=vec),
        Op("running_var", GetAttr("running_var"), type=vec),
        Op("var_eps", FunctionCall("operator.add"), (Ref("running_var"), Const(bn.eps)), type=vec),
        Op("inv_std", MethodCall("rsqrt"), (Ref("var_eps"),), type=vec),
        Op("scale_c", FunctionCall("operator.mul"), (Ref("weight"), Ref("inv_std")), type=vec),
        Op("bias", GetAttr("bias"), type=vec),
        Op("running_mean", GetAttr("running_mean"), type=vec),
        Op("mean_scaled", FunctionCall("operator.mul"), (Ref("running_mean"), Ref("scale_c")), type=vec),
        Op("shift_c", FunctionCall("operator.sub"), (Ref("bias"), Ref("mean_scaled")), type=vec),
        Op("scale", MethodCall("reshape"), (Ref("scale_c"),) + tuple(Const(d) for d in shape)),
        Op("shift", MethodCall("reshape"), (Ref("shift_c"),) + tuple(Const(d) for d in shape)),
        Op("scaled", FunctionCall("operator.mul"), (Ref("x"), Ref("scale")), type=in_type),
        Op("out", FunctionCall("operator.add"), (Ref("scaled"), Ref("shift")), type=in_type),
    )
    body = Graph((Input("x", in_type),), ops, Ref("out"))
    specs = tuple(StateSpec(k, (c,), dtype, parameter=False) for k in state)
    cls = ClassRef("torchgraft.replace_module", f"FrozenBatchNorm{rank - 2}d" if rank > 2 else "FrozenBatchNorm1d")
    return Block(cls, (), body, specs, method="replace-module"), state


@dataclass(frozen=True)
class ReplaceModule(Pass):
    """Replace selected modules: BatchNorm -> GroupNorm / FrozenBatchNorm, activation modules,
    Identity, or anything through a Python ``factory``. See the module docstring for each swap.

    Options: ``from`` (what to replace), ``to`` (groupnorm, frozenbatchnorm, identity or an
    activation), ``where`` (a selector), ``groups`` (GroupNorm's group count, at most),
    ``factory`` (Python only: ``fn(site, tensors) -> (node, tensors)``).

    Before/after::

        replace-module{to=groupnorm groups=32}
        self.bn1 = nn.BatchNorm2d(64)      ->   self.bn1 = nn.GroupNorm(32, 64)
        replace-module{to=frozenbatchnorm}
        self.bn1 = nn.BatchNorm2d(64)      ->   self.bn1 = FrozenBatchNorm2d()   # x * scale + shift
    """

    name: ClassVar[str] = "replace-module"
    keeps_semantics: ClassVar[bool] = False
    from_: str | None = None
    to: str | None = None
    where: str | None = None
    groups: int = 32
    factory: Factory | None = None

    def _builder(self, model: Model) -> tuple[Callable[[Site, Tensors], tuple[Node, Tensors] | None], str]:
        """The factory to use and the matching rule's description."""
        if self.factory is not None:
            if not callable(self.factory):
                raise ReplaceError("replace-module: factory= is a Python function (site, tensors) -> (node, tensors); "
                                   "it has no text form")
            if self.to is not None:
                raise ReplaceError("replace-module: give either to= or factory=, not both")
            return self.factory, "factory"
        if self.to is None:
            raise ReplaceError(f"replace-module: say what to replace with: to= one of {', '.join(BUILTIN_TARGETS)} "
                               "or an activation (relu, gelu, silu, ...); or pass factory= in Python")
        target = _key(self.to)
        if target in ("groupnorm", "frozenbatchnorm", "frozenbn"):
            if self.from_ is not None and not ({_key(self.from_)} & {"batchnorm", "bn", "batchnorm1d",
                                                                       "batchnorm2d", "batchnorm3d"}):
                raise ReplaceError(f"replace-module: to={self.to} replaces BatchNorm layers, not from={self.from_}")
            if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups <= 0:
                raise ReplaceError(f"replace-module: groups must be a positive int, got {self.groups!r}")
            if target == "groupnorm":
                return lambda s, t: groupnorm_for(s.node, t, self.groups) if isinstance(s.node, BatchNorm) else None, \
                    "batchnorm"

            def frozen(s: Site, t: Tensors) -> tuple[Node, Tensors] | None:
                if not isinstance(s.node, BatchNorm):
                    return None
                ty = model.type_at(s.path)
                rank = ty.rank if isinstance(ty, TensorType) else None
                try:
                    return frozen_batchnorm_for(s.node, t, rank, ty)
                except ReplaceError as e:
                    raise ReplaceError(f"{s.path}: {e}") from None

            return frozen, "batchnorm"
        if target == "identity":
            if self.from_ is None and self.where in (None, "", "*"):
                raise ReplaceError("replace-module{to=identity} needs from= or where= (it would replace everything)")
            return (lambda s, t: (Identity(), {})), "from"
        kind = _activation(self.to)
        if kind is None:
            raise ReplaceError(f"replace-module: unknown target to={self.to!r}; use one of "
                               f"{', '.join(BUILTIN_TARGETS)}, an activation, or factory= in Python")
        if _activation(self.from_) is None:
            raise ReplaceError(f"replace-module: to={self.to} is an activation, so from= must name one "
                               f"(got {self.from_!r})")
        can_inplace = "inplace" in torch_defaults(kind.module)

        def activation(s: Site, t: Tensors) -> tuple[Node, Tensors] | None:
            if not isinstance(s.node, Activation):
                return None
            return Activation.of(kind, inplace=s.node.inplace and can_inplace), {}

        return activation, "from"

    def _source(self, node: Node, rule: str) -> bool:
        if rule == "batchnorm" and not isinstance(node, BatchNorm):
            return False
        if self.from_ is None:
            return True
        act = _activation(self.from_)
        if act is not None and isinstance(node, Activation):
            return node.kind is act
        return _key(self.from_) in _names(node)

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        build, rule = self._builder(model)
        sel = parse_selector(self.where)
        weights = dict(model.weights)
        constants = dict(model.constants)
        types = dict(model.types)
        matches: list[Match] = []
        replaced: list[str] = []

        under = {name: _by_owner(store) for name, store in (("w", weights), ("c", constants), ("t", types))}

        def visit(node: Node, path: str, enclosing: tuple[str, ...]) -> Node:
            site = Site(path, node, enclosing)
            if path and self._source(node, rule) and sel(site):
                cut = len(path) + 1
                out = build(site, {k[cut:]: weights[k] for k in under["w"].get(path, ())})
                if out is not None:
                    new, new_tensors = out
                    _check_output(path, new, new_tensors)
                    for name, store in (("w", weights), ("c", constants), ("t", types)):
                        for k in under[name].get(path, ()):
                            store.pop(k, None)
                    weights.update({join(path, k): v for k, v in new_tensors.items()})
                    matches.append(Match(path, f"{_label(node)} -> {_label(new)}"))
                    replaced.append(path)
                    return new
            inner = enclosing + enclosing_label(node)
            kids = module_children(node)
            new_kids = tuple((n, visit(c, join(path, n), inner)) for n, c in kids)
            if any(a is not b for (_, a), (_, b) in zip(kids, new_kids, strict=True)):
                node = with_children(node, new_kids)
            return node

        root = visit(model.root, "", ())
        if root is model.root:
            return model, matches
        paths = {p for p, _ in walk(root)} | set(weights)
        ties = tuple((a, t) for a, t in model.ties if a in paths and t in paths)
        return replace(model, root=root, weights=weights, constants=constants, ties=ties,
                       types=tuple(sorted(types.items()))), matches

    def notes(self, model: Model) -> list[str]:
        """Semantic warnings for this swap (GroupNorm changes the model's function)."""
        if self.to is not None and _key(self.to) == "groupnorm":
            return ["BatchNorm -> GroupNorm changes what the model computes (per-sample statistics instead of "
                    "running ones): fine-tune the model before using it"]
        if self.to is not None and _key(self.to) in ("frozenbatchnorm", "frozenbn"):
            return ["FrozenBatchNorm equals BatchNorm in eval mode; in training mode it no longer normalises "
                    "by batch statistics or updates running statistics"]
        return []


def _by_owner(store: Mapping[str, object]) -> dict[str, list[str]]:
    """Module path -> the keys below it (``"a.b.weight"`` is below ``"a"`` and ``"a.b"``)."""
    out: dict[str, list[str]] = {}
    for key in store:
        parts = key.split(".")
        for i in range(1, len(parts)):
            out.setdefault(".".join(parts[:i]), []).append(key)
    return out


def _label(node: Node) -> str:
    if isinstance(node, Primitive):
        return node.label()
    if isinstance(node, (Block, Opaque)):
        return node.cls.name
    return type(node).__name__


def _check_output(path: str, node: object, tensors: object) -> None:
    """The factory's node is an IR node and its tensors are exactly the state the node implies."""
    from torchgraft.ir.nodes import NODE_TYPES
    from torchgraft.ir.verify import implied_state

    if not isinstance(node, NODE_TYPES):
        raise ReplaceError(f"{path}: the replacement {node!r} is not an IR node")
    if not isinstance(tensors, dict):
        raise ReplaceError(f"{path}: the replacement's tensors must be a dict of name -> tensor, got "
                           f"{type(tensors).__name__}")
    implied = implied_state(node)
    missing, extra = sorted(set(implied) - set(tensors)), sorted(set(tensors) - set(implied))
    if missing or extra:
        raise ReplaceError(f"{path}: the replacement {_label(node)} needs tensors {sorted(implied)}, but the factory "
                           f"returned {sorted(tensors)} (missing {missing}, unexpected {extra})")
    for k, (shape, _) in implied.items():
        if tuple(tensors[k].shape) != shape:
            raise ReplaceError(f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)}, but "
                               f"{_label(node)} needs {shape}")

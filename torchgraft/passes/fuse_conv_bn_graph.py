"""``fuse-conv-bn`` in a Graph body (a forward that is not only structure): the conv/BatchNorm pairs of its
dataflow (the conv's only user is the BatchNorm) and the functional ``F.batch_norm`` sites over a conv child's
output and the block's own state.

>>> child_pairs(block.body)   # doctest: +SKIP
[(Op('conv', ChildCall('conv'), ...), Op('bn', ChildCall('bn'), ...))]
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, replace

import torch.nn.functional as F

from torchgraft.ir.graph import ChildCall, GetAttr, Graph, Op
from torchgraft.ir.nodes import Block
from torchgraft.ir.opkinds import OpKind, is_kind
from torchgraft.ir.values import Arg, Const, Ref, Training, rename_refs

_BN_SIGNATURE = inspect.signature(F.batch_norm)
_STAT_ARGS = ("running_mean", "running_var", "weight", "bias")


@dataclass(frozen=True)
class FnSite:
    """A functional ``F.batch_norm`` site over a conv child's output, in one graph."""

    conv_op: str
    conv: str  # child path
    bn_op: str
    attrs: tuple[tuple[str, str | None], ...]  # (running_mean/var/weight/bias, own state name or None)
    attr_ops: tuple[str, ...]
    eps: float
    dynamic: bool  # training=self.training

    @property
    def key(self) -> tuple[object, ...]:
        return self.conv, self.attrs, self.eps, self.dynamic


def bind_batch_norm(op: Op) -> dict[str, Arg] | None:
    """An ``F.batch_norm`` call's arguments by parameter name (None when they do not bind)."""
    try:
        bound = _BN_SIGNATURE.bind(*op.args, **dict(op.kwargs))
    except TypeError:
        return None
    return dict(bound.arguments)


def functional_sites(g: Graph, block: Block) -> list[FnSite]:
    """``F.batch_norm`` calls over a conv/linear child's output and the block's own state."""
    users = g.users()
    by_name = {op.name: op for op in g.ops}
    own = {s.name for s in block.state}
    attr_readers = Counter(op.target.path for op in g.ops if isinstance(op.target, GetAttr))
    out = []
    for op in g.ops:
        if not is_kind(op, OpKind.BATCH_NORM):
            continue
        bound = bind_batch_norm(op)
        if bound is None:
            continue
        src = bound.get("input")
        conv_op = by_name.get(src.name) if isinstance(src, Ref) else None
        if (conv_op is None or not isinstance(conv_op.target, ChildCall) or "." in conv_op.target.path
                or users[conv_op.name] != [op.name]):
            continue
        training = bound.get("training", Const(False))
        if training != Const(False) and not isinstance(training, Training):
            continue
        eps = bound.get("eps", Const(1e-5))
        if not (isinstance(eps, Const) and isinstance(eps.value, (int, float)) and not isinstance(eps.value, bool)):
            continue
        attrs: list[tuple[str, str | None]] = []
        attr_ops: list[str] = []
        for name in _STAT_ARGS:
            a = bound.get(name, Const(None))
            if a == Const(None) and name in ("weight", "bias"):
                attrs.append((name, None))
                continue
            getter = by_name.get(a.name) if isinstance(a, Ref) else None
            if (getter is None or not isinstance(getter.target, GetAttr) or getter.target.path not in own
                    or attr_readers[getter.target.path] != 1 or set(users[getter.name]) != {op.name}):
                break
            attrs.append((name, getter.target.path))
            attr_ops.append(getter.name)
        else:
            out.append(FnSite(conv_op.name, conv_op.target.path, op.name, tuple(attrs), tuple(attr_ops),
                               float(eps.value), isinstance(training, Training)))
    return out


def child_pairs(g: Graph) -> list[tuple[Op, Op]]:
    """(first, second) calls of direct children where the first's only user is the second, called with it alone:
    the dataflow form of ``Chain[first, second]``."""
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


def drop_ops(g: Graph, renames: dict[str, str], drop: set[str] = frozenset()) -> Graph:  # type: ignore[assignment]
    """``g`` without the ops in ``renames`` (uses read the renamed value instead) or in ``drop``."""
    ops = []
    for op in g.ops:
        if op.name in renames or op.name in drop:
            continue
        ops.append(replace(op, args=tuple(rename_refs(a, renames) for a in op.args),
                           kwargs=tuple((k, rename_refs(v, renames)) for k, v in op.kwargs)))
    return Graph(g.inputs, tuple(ops), rename_refs(g.output, renames))

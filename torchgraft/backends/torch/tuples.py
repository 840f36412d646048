"""A tuple rebuilt from all its items, in order, is the tuple: ``(pe[0], pe[1])`` is written ``pe``.

A trace records each item a forward reads (``position_embeddings[0]``, ``[1]``) and the tuple it passes
on rebuilt from them. When the value is known to be a tuple of exactly that many items (its captured
type, ``tuple[f32[1, 7, 8], f32[1, 7, 8]]``), the rebuilt tuple equals it item for item, so the emitted
call passes the value itself; the item reads nobody else uses are then pruned.

    position_embeddings_0 = position_embeddings[0]            ->   out = self.self_attn(
    out = self.self_attn(..., position_embeddings=(               ...,
        position_embeddings_0, position_embeddings[1]))            position_embeddings=position_embeddings)
"""

from __future__ import annotations

from dataclasses import replace

from torchgraft.ir.graph import Graph
from torchgraft.ir.opkinds import OpKind, is_kind
from torchgraft.ir.types import ScalarType, ValueType
from torchgraft.ir.values import Arg, Const, DictArg, Ref, Seq


def _whole(arg: Seq, items: dict[str, tuple[str, int]], types: dict[str, ValueType]) -> Arg:
    """``Ref(t)`` when ``arg`` is ``(t[0], ..., t[k-1])`` and ``t`` is a tuple of k items; else ``arg``."""
    if arg.is_list or not arg.items or not all(isinstance(a, Ref) and a.name in items for a in arg.items):
        return arg
    sources = {items[a.name][0] for a in arg.items if isinstance(a, Ref)}
    if len(sources) != 1:
        return arg
    source = sources.pop()
    t = types.get(source)
    indices = [items[a.name][1] for a in arg.items if isinstance(a, Ref)]
    if not (isinstance(t, ScalarType) and t.name == "tuple" and len(t.items) == len(indices)):
        return arg
    return Ref(source) if indices == list(range(len(indices))) else arg


def _rewrite(arg: Arg, items: dict[str, tuple[str, int]], types: dict[str, ValueType]) -> Arg:
    if isinstance(arg, Seq):
        inner = Seq(tuple(_rewrite(a, items, types) for a in arg.items), arg.is_list)
        return _whole(inner, items, types)
    if isinstance(arg, DictArg):
        return DictArg(tuple((k, _rewrite(v, items, types)) for k, v in arg.items))
    return arg


def whole_tuples(g: Graph) -> Graph:
    """``g`` with every tuple rebuilt from all the items of a tuple-typed value replaced by that value."""
    types: dict[str, ValueType] = {i.name: i.type for i in g.inputs}
    items: dict[str, tuple[str, int]] = {}
    for op in g.ops:
        types[op.name] = op.type
        if is_kind(op, OpKind.GETITEM) and len(op.args) == 2 and not op.kwargs and isinstance(op.args[0], Ref) \
                and isinstance(op.args[1], Const) and type(op.args[1].value) is int:
            items[op.name] = (op.args[0].name, op.args[1].value)
    if not items:
        return g
    ops = tuple(replace(op, args=tuple(_rewrite(a, items, types) for a in op.args),
                        kwargs=tuple((k, _rewrite(v, items, types)) for k, v in op.kwargs)) for op in g.ops)
    return Graph(g.inputs, ops, _rewrite(g.output, items, types))


__all__ = ["whole_tuples"]

"""Idioms written as what they compute: graph rewrites that keep every value exactly, for readable emission.

A trace records how library code spelled a computation, which is often longer than what it computes.
Each rule here recognises one such spelling and replaces it by the one call that computes the same
values (element for element, same dtype and shape), so the emitted forward reads like hand-written code:

- **repeat along a dim** (transformers' ``repeat_kv`` for grouped-query attention)::

      n, c, h, w = k.shape
      key = k[:, :, None, :, :].expand(n, c, 2, h, w).reshape(n, c * 2, h, w)
  ->  key = k.repeat_interleave(2, dim=1)

- **sizes read once**: ``q.size(0)`` is ``batch`` when the ops make the two dims equal (``ir/dims.py``);
- **a reshape to the same shape**, ``x.reshape(x.size(0), -1, t, d)`` with ``x`` of those sizes, is ``x``;
- **contiguous again**: ``x.contiguous().reshape(n, t, -1).contiguous()`` needs only the first;
- **a whole slice**: ``h[:, 0:, :]`` (transformers' ``logits_to_keep=0``) is ``h``.

What the rules assume: the original's own call succeeds. Where it would raise on a malformed input (a
tensor of another rank reaching ``repeat_kv``), the simpler code may accept it; ``check``'s probes skip
calls the reference refuses for the same reason. A rule never changes what a call that the original
accepts computes, and never moves or drops an op with an effect (``ir.effects``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torchgraft.ir.dims import Dims, whole_shape
from torchgraft.ir.effects import in_place, is_pure, writes_shape
from torchgraft.ir.graph import Graph, MethodCall, Op, renamed
from torchgraft.ir.opkinds import OpKind, is_kind, method_kind
from torchgraft.ir.ranks import listed_sizes
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Arg, Const, Ref, Seq, Slice

Rule = Callable[[Graph], "Graph | None"]
"""A rewrite: the graph with one site rewritten, or None when the rule finds no site."""

_FULL = Slice(Const(None), Const(None), Const(None))


def _method(op: Op | None, *kinds: OpKind) -> bool:
    """``op`` is a tensor method call of one of ``kinds`` (``x.reshape(...)``), with no keyword arguments."""
    if op is None or not isinstance(op.target, MethodCall) or op.kwargs or not isinstance(op.args[0], Ref):
        return False
    found = method_kind(op.target.name)
    return found is not None and found.kind in kinds and not found.in_place


def _size_of(ops: dict[str, Op], arg: Arg) -> tuple[str, int] | None:
    """(tensor, dim) when ``arg`` is ``tensor.size(dim)`` or ``tensor.shape[dim]`` with a literal dim >= 0."""
    op = ops.get(arg.name) if isinstance(arg, Ref) else None
    if op is None or len(op.args) != 2 or op.kwargs:
        return None
    src, dim = op.args
    if not isinstance(src, Ref) or not isinstance(dim, Const) or type(dim.value) is not int or dim.value < 0:
        return None
    if is_kind(op, OpKind.SIZE):
        return src.name, dim.value
    whole = ops.get(src.name) if is_kind(op, OpKind.GETITEM) else None
    if whole is None or not whole_shape(whole) or not isinstance(whole.args[0], Ref):
        return None
    return whole.args[0].name, dim.value


def _times(ops: dict[str, Op], arg: Arg, factor: int) -> Arg | None:
    """``a`` when ``arg`` is ``a * factor`` (or ``factor * a``), else None."""
    op = ops.get(arg.name) if isinstance(arg, Ref) else None
    if op is None or not is_kind(op, OpKind.MUL) or op.kwargs or len(op.args) != 2 or not is_pure(op):
        return None
    a, b = op.args
    if b == Const(factor):
        return a
    return b if a == Const(factor) else None


def repeat_interleaved(g: Graph) -> Graph | None:
    """``x[:, :, None, :, :].expand(n, c, r, h, w).reshape(n, c * r, h, w)`` with ``n, c, h, w = x.shape``
    -> ``x.repeat_interleave(r, dim=1)`` (any dim ``d`` of the ``None``, sizes those of ``x``): both put
    ``x[..., i, ...]`` at ``i * r + j`` for ``j < r``. The indexing and expand must be read only there."""
    ops = {op.name: op for op in g.ops}
    users = g.users()
    if any(in_place(op) for op in g.ops):  # with one repeat the original is a view of x, repeat_interleave a copy
        return None
    for y in g.ops:
        if not _method(y, OpKind.RESHAPE):
            continue
        e = ops.get(y.args[0].name)  # type: ignore[union-attr]
        if not _method(e, OpKind.EXPAND) or users[e.name] != [y.name]:  # type: ignore[union-attr]
            continue
        assert e is not None
        picked = ops.get(e.args[0].name)  # type: ignore[union-attr]
        found = _inserted_dim(picked)
        if found is None or users[picked.name] != [e.name]:  # type: ignore[union-attr]
            continue
        x, d = found
        if any(u != picked.name and not (u in ops and (is_kind(ops[u], OpKind.SIZE) or whole_shape(ops[u])))  # type: ignore[union-attr]
               for u in users.get(x, [])):  # x is read only for its sizes besides: nothing writes it
            continue
        wide, sizes = listed_sizes(e), listed_sizes(y)
        rank = len(wide) - 1
        r = wide[d] if d < len(wide) else None
        if not (isinstance(r, Const) and type(r.value) is int and r.value >= 1) or len(sizes) != rank:
            continue
        own = [_size_of(ops, s) for s in (*wide[:d], *wide[d + 1:])]
        if own != [(x, k) for k in range(rank)] or d == 0:
            continue
        if list(sizes[:d - 1]) != list(wide[:d - 1]) or list(sizes[d:]) != list(wide[d + 1:]) \
                or _times(ops, sizes[d - 1], r.value) != wide[d - 1]:
            continue
        new = replace(y, target=MethodCall("repeat_interleave"), args=(Ref(x), r), kwargs=(("dim", Const(d - 1)),))
        return Graph(g.inputs, tuple(new if op.name == y.name else op for op in g.ops), g.output)
    return None


def _inserted_dim(op: Op | None) -> tuple[str, int] | None:
    """(x, d) when ``op`` is ``x[:, ..., :, None, :, ...]``: full slices around one ``None`` at position d."""
    if op is None or not is_kind(op, OpKind.GETITEM) or op.kwargs or len(op.args) != 2 \
            or not isinstance(op.args[0], Ref) or not isinstance(op.args[1], Seq):
        return None
    items = op.args[1].items
    nones = [k for k, a in enumerate(items) if a == Const(None)]
    if len(nones) != 1 or any(a != _FULL for k, a in enumerate(items) if k != nones[0]):
        return None
    return op.args[0].name, nones[0]


def _drop(g: Graph, old: str, new: str) -> Graph:
    """``g`` without op ``old``, its readers reading ``new`` instead."""
    return renamed(g, {old: new}, tuple(op for op in g.ops if op.name != old))


def _size_read(op: Op, dims: Dims) -> bool:
    return op.name in dims.size_read and (is_kind(op, OpKind.SIZE) or is_kind(op, OpKind.GETITEM))


def same_size_read(g: Graph) -> Graph | None:
    """A size read again through another tensor -> the first read: ``q.size(0)`` is ``batch`` when ``q`` and
    ``hidden_states`` share that dim by the ops' rules (``ir/dims.py``): ``q.view(batch, seq_len, -1, 8)``."""
    dims = Dims(g)
    first: dict[tuple[str, int], str] = {}
    for op in g.ops:
        if not _size_read(op, dims):
            continue
        cls = dims.find(dims.size_read[op.name])
        if cls[0] == "#":  # a size the graph fixes (``q.size(-1)`` after ``view(..., 8)``): read as written
            continue
        if cls in first:
            return _drop(g, op.name, first[cls])
        first[cls] = op.name
    return None


def same_shape_reshape(g: Graph) -> Graph | None:
    """``y = x.reshape(n, -1, t, d)`` whose sizes are ``x``'s own (``-1`` at most once, ``x`` of that rank) ->
    ``x``: a reshape or view to the same shape returns ``x``'s elements as they are. (On an empty tensor a
    ``-1`` makes the original raise; the emitted model then returns the empty result.)"""
    dims = Dims(g)
    for y in g.ops:
        if not _method(y, OpKind.RESHAPE, OpKind.VIEW):
            continue
        x, sizes = y.args[0].name, listed_sizes(y)  # type: ignore[union-attr]
        if dims.rank.get(x) != len(sizes) or sum(s == Const(-1) for s in sizes) > 1:
            continue
        if all(s == Const(-1) or dims.same(dims.dim_of(s), (x, j)) for j, s in enumerate(sizes)):
            return _drop(g, y.name, x)
    return None


def contiguous_again(g: Graph) -> Graph | None:
    """``x.contiguous()`` of a tensor that is contiguous by construction (the result of ``contiguous()``, or a
    view or reshape of one) -> ``x``: ``contiguous()`` returns such a tensor itself."""
    ops = {op.name: op for op in g.ops}
    known: set[str] = set()
    for op in g.ops:
        if not isinstance(op.target, MethodCall) or op.kwargs or not op.args or not isinstance(op.args[0], Ref):
            continue
        src = op.args[0].name
        if op.target.name == "contiguous" and len(op.args) == 1:
            if src in known:
                return _drop(g, op.name, src)
            known.add(op.name)
        elif _method(op, OpKind.RESHAPE, OpKind.VIEW) and src in known and src in ops:
            known.add(op.name)
    return None


def _everything(item: Arg) -> bool:
    """``:``, ``0:``, ``::1`` or ``...``: an index item that keeps a whole dim (or all of them)."""
    if item == Const(Ellipsis):
        return True
    return isinstance(item, Slice) and item.start in (Const(None), Const(0)) and item.stop == Const(None) \
        and item.step in (Const(None), Const(1))


def whole_slice(g: Graph) -> Graph | None:
    """``x[:, 0:, :]`` of a tensor -> ``x``: every item keeps its whole dim (transformers' ``logits_to_keep=0``
    slices ``[:, -0:, :]``), so the view has ``x``'s shape and elements."""
    for y in g.ops:
        if not is_kind(y, OpKind.GETITEM) or len(y.args) != 2 or y.kwargs or not isinstance(y.args[0], Ref) \
                or not isinstance(y.type, TensorType):
            continue
        index = y.args[1]
        items = index.items if isinstance(index, Seq) and not index.is_list else (index,)
        if items and all(_everything(i) for i in items):
            return _drop(g, y.name, y.args[0].name)
    return None


RULES: tuple[Rule, ...] = (whole_slice, repeat_interleaved, same_shape_reshape, contiguous_again, same_size_read)
"""Every rule, tried in order until none applies."""


def simplified(g: Graph, rules: tuple[Rule, ...] = RULES, limit: int = 1000) -> Graph:
    """``g`` with every rule applied until none finds a site (ops left unread are for the caller to prune).

    >>> simplified(llama_attention_graph).ops   # doctest: +SKIP
    (..., Op('reshape', MethodCall('repeat_interleave'), (Ref('add_1'), Const(2)), (('dim', Const(1)),)), ...)
    """
    if writes_shape(g):  # x.t_(): a tensor's shape and layout change in place, which no rule follows
        return g
    for _ in range(limit):
        for rule in rules:
            found = rule(g)
            if found is not None:
                g = found
                break
        else:
            return g
    return g


__all__ = ["RULES", "Rule", "contiguous_again", "repeat_interleaved", "same_shape_reshape", "same_size_read",
           "simplified", "whole_slice"]

"""Which dims of a graph's tensors are equal on every call the original accepts, from the ops alone.

``Dims(g)`` reads the ops in order and joins dims that an op's own rule makes equal, whatever the
input sizes: ``y = x.view(n, t, -1, 8)`` with ``n = h.size(0)`` makes dim 0 of ``y`` that of ``h``;
``x.transpose(1, 2)`` swaps two; ``q, k, v = x.split(32, dim=2)`` keeps every dim but the 2nd;
``a + 1`` keeps all; ``scaled_dot_product_attention(q, k, v)`` has ``q``'s dims but the last, which is
``v``'s. Nothing comes from the captured types (a traced 7 may be any length at run time), and a dim
counted from the end (``x.size(-1)``) is joined only where the rank is fixed by the graph.

>>> d = Dims(graph)                                             # doctest: +SKIP
>>> d.same(d.key("split_0", 0), d.key("split_1", 0))         # doctest: +SKIP
True
"""

from __future__ import annotations

from torchgraft.ir.graph import FunctionCall, Graph, MethodCall, Op
from torchgraft.ir.opkinds import OpKind, activation_of, is_kind, kind_of, method_kind
from torchgraft.ir.ranks import listed_sizes
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Arg, Const, Ref

Key = tuple[str, int]
"""(value, dim): a dim counted from 0, or from the end (negative) while the value's rank is unknown;
``("#", n)`` stands for the literal size ``n``."""

SAME_SHAPE = frozenset({"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "long", "int",
                        "bool", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "relu", "sin",
                        "cos", "reciprocal", "square", "type_as"})
"""Tensor methods whose result has their receiver's shape (the dtype may change, with ``float`` or ``type_as``)."""
_SDPA = "torch.nn.functional.scaled_dot_product_attention"
_INT_ARITHMETIC = frozenset({OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.FLOORDIV, OpKind.MOD})
_BINARY = frozenset({OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.TRUEDIV, OpKind.MAXIMUM, OpKind.MINIMUM,
                     OpKind.EQ, OpKind.NE, OpKind.LT, OpKind.LE, OpKind.GT, OpKind.GE, OpKind.AND, OpKind.OR})


class Dims:
    """Union-find over (value, dim) keys of one graph: see the module docstring."""

    def __init__(self, g: Graph) -> None:
        self.parent: dict[Key, Key] = {}
        self.rank: dict[str, int] = {}
        self.size_read: dict[str, Key] = {}  # an int value -> the dim it reads
        self._tensors = {i.name for i in g.inputs if isinstance(i.type, TensorType)}
        self._ops = {op.name: op for op in g.ops}
        for op in g.ops:
            self._op(op)

    def find(self, k: Key) -> Key:
        """The representative of ``k``'s class."""
        while self.parent.get(k, k) != k:
            self.parent[k] = self.parent.get(self.parent[k], self.parent[k])
            k = self.parent[k]
        return k

    def join(self, a: Key | None, b: Key | None) -> None:
        """Record that dims ``a`` and ``b`` are equal."""
        if a is not None and b is not None:
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def same(self, a: Key | None, b: Key | None) -> bool:
        """Whether dims ``a`` and ``b`` are equal on every call (False when unknown)."""
        return a is not None and b is not None and self.find(a) == self.find(b)

    def key(self, value: str, dim: int) -> Key | None:
        """The key of dim ``dim`` of ``value`` (counted from 0 where its rank is known)."""
        r = self.rank.get(value)
        if r is not None:
            if not -r <= dim < r:
                return None
            return value, dim % r
        return value, dim

    def dim_of(self, arg: Arg) -> Key | None:
        """The dim an int argument stands for: a size read's (``x.size(1)``), a literal's, else None."""
        if isinstance(arg, Const):
            return ("#", arg.value) if type(arg.value) is int and arg.value >= 0 else None
        return self.size_read.get(arg.name) if isinstance(arg, Ref) else None

    def _int(self, arg: Arg, depth: int = 8) -> bool:
        """Whether ``arg`` is one integer: a literal, a size read, or integer arithmetic on those."""
        if isinstance(arg, Const):
            return type(arg.value) is int
        if not isinstance(arg, Ref) or arg.name in self.size_read:
            return isinstance(arg, Ref)
        op = self._ops.get(arg.name)
        found = kind_of(op) if op is not None and depth > 0 and not op.kwargs else None
        return found is not None and found.kind in _INT_ARITHMETIC and not found.in_place \
            and all(self._int(a, depth - 1) for a in op.args)  # type: ignore[union-attr]

    # -- the rules ---------------------------------------------------------------------------------

    def _op(self, op: Op) -> None:
        t = op.target
        src = op.args[0].name if op.args and isinstance(op.args[0], Ref) else None
        if is_kind(op, OpKind.SIZE) and src is not None and len(op.args) == 2 and not op.kwargs:
            dim = op.args[1]
            if isinstance(dim, Const) and type(dim.value) is int:
                found = self.key(src, dim.value)
                if found is not None:
                    self.size_read[op.name] = found
            return
        if is_kind(op, OpKind.GETITEM) and src is not None:
            self._getitem(op, src)
            return
        if isinstance(t, MethodCall) and src is not None:
            self._method(op, t.name, src)
        elif isinstance(t, FunctionCall):
            self._function(op)

    def _same(self, out: str, src: str) -> None:
        """``out`` has ``src``'s shape."""
        self._tensors.add(out)
        r = self.rank.get(src)
        if r is not None:
            self.rank[out] = r
            for d in range(r):
                self.join((out, d), (src, d))
        else:
            for d in (0, 1, -1):  # what is counted the same way in both
                self.join((out, d), (src, d))

    def _method(self, op: Op, name: str, src: str) -> None:
        found = method_kind(name)
        kind = found.kind if found is not None and not found.in_place else None
        if kind in (OpKind.VIEW, OpKind.RESHAPE, OpKind.EXPAND) and not op.kwargs:
            self._sized(op, src, kind is OpKind.EXPAND)
        elif name == "transpose" and len(op.args) == 3 and not op.kwargs:
            self._transpose(op, src)
        elif name in ("split", "chunk"):
            self._tensors.add(op.name)  # a tuple: its items are read by getitem
        elif name in SAME_SHAPE or name == "to":  # whatever their arguments (a dtype, a device, a tensor)
            self._same(op.name, src)
        elif kind in _BINARY:
            self._binary(op)

    def _function(self, op: Op) -> None:
        t = op.target
        assert isinstance(t, FunctionCall)
        act = activation_of(t)
        if act is not None and op.args and isinstance(op.args[0], Ref):  # every activation is elementwise
            self._same(op.name, op.args[0].name)
        elif t.qualname == _SDPA and len(op.args) == 3 and all(isinstance(a, Ref) for a in op.args):
            q, k, v = (a.name for a in op.args if isinstance(a, Ref))
            r = self.rank.get(q)
            self._tensors.add(op.name)
            if r is not None and r >= 2 and self.rank.get(k) == r and self.rank.get(v) == r:
                self.rank[op.name] = r  # batch dims broadcast over q, k and v: q's only where all three share it
                for d in range(r - 2):
                    if self.same((q, d), (k, d)) and self.same((q, d), (v, d)):
                        self.join((op.name, d), (q, d))
            self.join(self.key(op.name, -2), self.key(q, -2))  # (..., L, Ev): q's length, v's width
            self.join(self.key(op.name, -1), self.key(v, -1))
        elif (found := kind_of(op)) is not None and found.kind in _BINARY and not found.in_place:
            self._binary(op)

    def _sized(self, op: Op, src: str, expand: bool) -> None:
        """``x.view(sizes)``/``x.reshape(sizes)``/``x.expand(sizes)``: as many dims as sizes, each the size given
        (``-1`` in an expand keeps the input's dim, counted from the end)."""
        sizes = listed_sizes(op)
        if not sizes or not all(self._int(s) for s in sizes):  # not ``x.view(torch.int32)``, nor
            return  # ``x.view(y.shape)``: those fix no rank
        n = len(sizes)
        self.rank[op.name] = n
        self._tensors.add(op.name)
        for j, s in enumerate(sizes):
            if expand and s == Const(-1):
                self.join((op.name, j), self.key(src, j - n))
            else:
                self.join((op.name, j), self.dim_of(s))

    def _transpose(self, op: Op, src: str) -> None:
        a, b = op.args[1:]
        r = self.rank.get(src)
        if r is None or not (isinstance(a, Const) and isinstance(b, Const)) \
                or type(a.value) is not int or type(b.value) is not int \
                or not (-r <= a.value < r and -r <= b.value < r):
            return
        i, j = a.value % r, b.value % r
        self.rank[op.name] = r
        self._tensors.add(op.name)
        for d in range(r):
            self.join((op.name, d), (src, j if d == i else i if d == j else d))

    def _getitem(self, op: Op, src: str) -> None:
        """``x.shape[d]`` (a size read), or an item of ``x.split(n, dim)``/``x.chunk(n, dim)``: ``x``'s dims
        but ``dim``."""
        whole = self._ops.get(src)
        if whole is not None and whole_shape(whole) and len(op.args) == 2 and isinstance(op.args[1], Const) \
                and type(op.args[1].value) is int and isinstance(whole.args[0], Ref):
            found = self.key(whole.args[0].name, op.args[1].value)
            if found is not None:
                self.size_read[op.name] = found
            return
        if whole is None or not isinstance(whole.target, MethodCall) or whole.target.name not in ("split", "chunk") \
                or len(op.args) != 2 or not isinstance(op.args[1], Const) or not isinstance(whole.args[0], Ref):
            return
        x = whole.args[0].name
        r = self.rank.get(x)
        dims = [v for k, v in whole.kwargs if k == "dim"] + list(whole.args[2:3])
        dim = dims[0] if dims else Const(0)
        if not isinstance(dim, Const) or type(dim.value) is not int:
            return
        self._tensors.add(op.name)
        if r is None:  # the rank is unknown: only the dims before a dim counted from 0 are surely kept
            for d in range(max(dim.value, 0)):
                self.join((op.name, d), (x, d))
            return
        if not -r <= dim.value < r:
            return
        self.rank[op.name] = r
        for d in range(r):
            if d != dim.value % r:
                self.join((op.name, d), (x, d))

    def _binary(self, op: Op) -> None:
        """Elementwise with broadcasting: a number keeps the tensor's shape; two tensors of one known rank
        give, per dim, the dim both share, or the other's where one is the literal 1."""
        if len(op.args) != 2 or op.kwargs:
            return
        a, b = op.args
        tensors = [x.name for x in (a, b) if isinstance(x, Ref) and x.name in self._tensors]
        numbers = [x for x in (a, b) if isinstance(x, Const) and type(x.value) in (int, float, bool)]
        if len(tensors) == 1 and len(numbers) == 1:
            self._same(op.name, tensors[0])
            return
        ranks = {self.rank.get(v) for v in tensors}
        if len(tensors) != 2 or len(ranks) != 1 or None in ranks:
            return
        r = self.rank[tensors[0]]
        self.rank[op.name] = r
        self._tensors.add(op.name)
        one = ("#", 1)
        for d in range(r):
            ka, kb = (tensors[0], d), (tensors[1], d)
            if self.same(ka, kb) or self.same(kb, one):
                self.join((op.name, d), ka)
            elif self.same(ka, one):
                self.join((op.name, d), kb)


_RELAYOUT = frozenset({"view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "flatten", "expand",
                       "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as"})


def relayout(op: Op) -> bool:
    """Whether ``op``'s result holds its receiver's elements, only laid out or typed anew (``x.view(...)``,
    ``x.transpose(1, 2)``, ``x.float()``): a value that still means what its input meant."""
    return isinstance(op.target, MethodCall) and op.target.name in _RELAYOUT and bool(op.args) \
        and isinstance(op.args[0], Ref)


def whole_shape(op: Op) -> bool:
    """``op`` is ``x.shape`` (``getattr(x, "shape")``) or ``x.size()`` of a value ``x``."""
    if op.kwargs or not op.args or not isinstance(op.args[0], Ref):
        return False
    if is_kind(op, OpKind.SIZE):
        return len(op.args) == 1
    return is_kind(op, OpKind.GETATTR) and op.args[1:] == (Const("shape"),)


__all__ = ["SAME_SHAPE", "Dims", "Key", "relayout", "whole_shape"]

"""Names for the values of a forward, the way a person names them.

A value that carries on from a dead variable takes that variable's name (``out = ...;
out = ...``); otherwise ``out``, or a name from the operation: ``shape``, ``n, c, h, w``
for the sizes of a 4-d tensor, a parameter's own name, ``<child>_out``. fx's numbered
names (``add_7``, ``getitem_2``) never appear.
"""

from __future__ import annotations

import builtins
import keyword
import operator
import re
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from torchgraft.backends.torch.names import RESERVED
from torchgraft.ir.activations import ActKind
from torchgraft.ir.graph import ChildCall, FunctionCall, GetAttr, Graph, MethodCall, Op, PrimCall
from torchgraft.ir.opkinds import OpKind, is_kind, is_operator
from torchgraft.ir.primitives import Activation
from torchgraft.ir.types import TensorType, ValueType
from torchgraft.ir.values import Const, Ref

DIM_NAMES = {2: ("batch", "dim"), 3: ("batch", "seq_len", "dim"), 4: ("n", "c", "h", "w"), 5: ("n", "c", "t", "h", "w")}
GENERIC = "out"


def ident(text: str) -> str:
    """An ASCII identifier made from ``text`` ("" when nothing is left)."""
    base = re.sub(r"\W+", "_", text.encode("ascii", "ignore").decode()).strip("_")
    return "" if not base or base[0].isdigit() else base


def source_name(op: Op) -> str:
    """The name the original source gave the op's value (``q_embed``), "" when none or not plain ASCII."""
    return ident(op.source_var) if op.source_var.isascii() else ""


def without_source_names(g: Graph, indices: list[int]) -> Graph:
    """``g`` without the source names (``Op.source_var``) of the ops at ``indices``."""
    drop = set(indices)
    return replace(g, ops=tuple(replace(op, source_var="") if i in drop else op for i, op in enumerate(g.ops)))


def hint(op: Op) -> str:
    """A short word for what the op does: the child's name, the method or the function."""
    t = op.target
    if isinstance(t, ChildCall):
        return ident(t.path.replace(".", "_"))
    if isinstance(t, MethodCall):
        return ident(t.name)
    if is_operator(op):
        return "item" if is_kind(op, OpKind.GETITEM) else ""
    if isinstance(t, FunctionCall):
        return ident(t.qualname.rsplit(".", 1)[-1])
    if isinstance(t, PrimCall):
        return ident(t.prim.op.lower())
    return ""


def _norm(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def chosen(op: Op) -> str | None:
    """The op's own name when a person or a pass chose it (``scale``, ``shift``), None when it only
    repeats the call, as the names torch.fx makes do (``add_7``, ``layer1_0``, ``getitem_2``)."""
    t = op.target
    if isinstance(t, (ChildCall, GetAttr)):
        natural = [t.path]
    elif isinstance(t, FunctionCall):
        natural = [t.qualname.rsplit(".", 1)[-1]]
    elif isinstance(t, MethodCall):
        natural = [t.name]
    elif not isinstance(t, PrimCall):
        return None
    else:
        k = t.prim.kind if isinstance(t.prim, Activation) else None
        natural = [t.prim.op] + ([k.functional, k.method or "", k.torch_fn or ""] if k is not None else [])
    own = _norm(op.name)
    if not own or own in {_norm(n) for n in natural} or _generated(op.name):
        return None
    return ident(op.name) or None


def _generated(name: str) -> bool:
    """True for a name fx would derive from some call (``relu_1``, ``getitem``, ``cat``): kept in a
    graph whose call a pass changed, it would name the old call (``relu1`` after relu became silu)."""
    base = re.sub(r"_?\d+$", "", name).rstrip("_")
    return (not base or base.lower() in _ACT_WORDS or base in dir(builtins)
            or any(hasattr(ns, base) for ns in (torch, torch.Tensor, F, operator)))


_ACT_WORDS = frozenset(w.lower() for k in ActKind for w in (k.module, k.functional, k.method, k.torch_fn) if w)


def specific(op: Op, shapes: dict[str, int], ranks: dict[str, int] | None = None) -> str | None:
    """A name the op itself suggests (sizes, attributes), or None for a value that flows on.
    ``shapes``: values that are a tensor's shape, with its rank; ``ranks``: tensors' ranks."""
    t = op.target
    if isinstance(t, GetAttr):
        return ident(t.path.rsplit(".", 1)[-1]) or None
    if isinstance(t, FunctionCall) and is_kind(op, OpKind.GETATTR) and len(op.args) == 2:
        attr = op.args[1]
        return ident(str(attr.value)) or None if isinstance(attr, Const) else None
    if isinstance(t, MethodCall) and t.name == "dim" and len(op.args) == 1:
        return "ndim"
    if isinstance(t, MethodCall) and t.name == "size" and len(op.args) == 2 and isinstance(op.args[1], Const):
        return _dim_name(op.args[0], op.args[1].value, {**(ranks or {}), **shapes})
    if isinstance(t, MethodCall) and t.name == "size" and len(op.args) == 1:
        return "size"
    if is_kind(op, OpKind.GETITEM) and isinstance(op.args[1], Const):
        src = op.args[0]
        if isinstance(src, Ref) and src.name in shapes:
            return _dim_name(src, op.args[1].value, shapes, direct=True)
    return None


def _dim_name(src: object, index: object, shapes: dict[str, int], direct: bool = False) -> str | None:
    if not isinstance(src, Ref) or not isinstance(index, int) or src.name not in shapes:
        return None
    rank = shapes[src.name]
    names = DIM_NAMES.get(rank)
    if names is None or not -rank <= index < rank:
        return "size"
    return names[index]


def child_word(path: str) -> str:
    """A value name from the child that produced it: ``query`` for ``self.query``, ``q`` for ``self.q_proj``."""
    last = path.rpartition(".")[2]
    word = re.sub(r"_(proj|projection|layer|linear|fc)$", "", last)
    return ident(word) if word and not word[0].isdigit() else ""


def shape_source(op: Op, types: dict[str, ValueType]) -> int | None:
    """The rank of the tensor whose sizes this op reads (``x.shape``, ``x.size()``), else None."""
    t = op.target
    is_shape = ((isinstance(t, FunctionCall) and is_kind(op, OpKind.GETATTR) and len(op.args) == 2
                 and op.args[1] == Const("shape"))
                or (isinstance(t, MethodCall) and t.name == "size" and len(op.args) == 1))
    src = op.args[0] if op.args else None
    if is_shape and isinstance(src, Ref) and isinstance(types.get(src.name), TensorType):
        return types[src.name].rank  # type: ignore[union-attr]
    return None


class ValueNamer:
    """Hands out local variable names; a name is free again once the value holding it is dead."""

    def __init__(self, reserved: frozenset[str] | set[str], is_dead: Callable[[str], bool]) -> None:
        self.reserved = set(RESERVED) | set(reserved)
        self.is_dead = is_dead
        self.var_of: dict[str, str] = {}
        self.holder: dict[str, str] = {}

    def free(self, name: str) -> bool:
        """True if ``name`` is a valid local name nobody live holds."""
        if not name or not name.isidentifier() or keyword.iskeyword(name) or name in self.reserved:
            return False
        owner = self.holder.get(name)
        return owner is None or self.is_dead(owner)

    def take(self, value: str, name: str) -> str:
        """Give ``value`` the name ``name`` (no checks)."""
        self.var_of[value] = name
        self.holder[name] = value
        return name

    def pick(self, value: str, candidates: list[str]) -> str:
        """The first free candidate (numbered variants of the first when none is)."""
        for c in candidates:
            if self.free(c):
                return self.take(value, c)
        base = next((c for c in candidates if c), GENERIC)
        i = 2
        while not self.free(f"{base}{i}"):
            i += 1
        return self.take(value, f"{base}{i}")

    def input(self, value: str, module_globals: frozenset[str]) -> str:
        """A forward parameter keeps its own name (callers may pass it by keyword) unless it cannot."""
        ok = value.isidentifier() and not keyword.iskeyword(value) and value not in module_globals
        return self.take(value, value) if ok else self.pick(value, [ident(value) + "_", "x"])

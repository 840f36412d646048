"""How Parallel branches or a SkipConnection's two values are joined: ``Combine``.

Kinds and their meaning over values ``v0, v1, ...`` (a SkipConnection's are ``x, body(x)``):

* ``add``, ``sub``, ``mul``, ``max``, ``min``: folded left, ``((v0 - v1) - v2)``; ``max``/``min``
  are elementwise (``torch.maximum``/``torch.minimum``);
* ``mean``: the sum folded left, divided by the number of values;
* ``cat``/``stack``: ``torch.cat``/``torch.stack`` of the values along ``dim``.

Spell them ``Combine("max")``, ``combine="max"``, ``Concat(dim=1)``, ``Stack(dim=0)``, or with the
matching torch function (``Combine(torch.maximum)``, ``Combine(operator.sub)``). Anything else is
refused when the Combine is built.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchgraft.errors import IRError
from torchgraft.ir.functions import resolve
from torchgraft.ir.graph import FunctionCall, Op
from torchgraft.ir.values import Const, Ref, Seq


class CombineKind(enum.Enum):
    """The ways values can be joined (see the module docstring for their meaning)."""

    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    MAX = "max"
    MIN = "min"
    MEAN = "mean"
    CONCAT = "cat"
    STACK = "stack"

    @property
    def commutative(self) -> bool:
        """True when the order of the values does not change the result (add, mul, max, min, mean)."""
        return self not in (CombineKind.SUB, CombineKind.CONCAT, CombineKind.STACK)

    @property
    def takes_dim(self) -> bool:
        """True for ``cat`` and ``stack``, which join along a dimension."""
        return self in (CombineKind.CONCAT, CombineKind.STACK)


FOLD_FUNCTIONS: dict[CombineKind, str] = {
    CombineKind.ADD: "operator.add", CombineKind.SUB: "operator.sub", CombineKind.MUL: "operator.mul",
    CombineKind.MAX: "torch.maximum", CombineKind.MIN: "torch.minimum", CombineKind.MEAN: "operator.add"}
"""The binary function each folded kind applies left to right (``mean`` then divides by the count)."""

JOIN_FUNCTIONS: dict[CombineKind, str] = {CombineKind.CONCAT: "torch.cat", CombineKind.STACK: "torch.stack"}
"""The function each kind with a ``dim`` calls on the list of values."""

FUNCTION_KINDS: dict[str, CombineKind] = {
    "operator.add": CombineKind.ADD, "torch.add": CombineKind.ADD,
    "operator.sub": CombineKind.SUB, "torch.sub": CombineKind.SUB, "torch.subtract": CombineKind.SUB,
    "operator.mul": CombineKind.MUL, "torch.mul": CombineKind.MUL, "torch.multiply": CombineKind.MUL,
    "torch.maximum": CombineKind.MAX, "torch.minimum": CombineKind.MIN,
    "torch.cat": CombineKind.CONCAT, "torch.concat": CombineKind.CONCAT, "torch.concatenate": CombineKind.CONCAT,
    "torch.stack": CombineKind.STACK}
"""Allow-listed functions accepted as a Combine, by qualified name, and the kind each stands for."""


@functools.lru_cache(maxsize=1)
def _function_table() -> dict[int, CombineKind]:
    return {id(resolve(name)): kind for name, kind in FUNCTION_KINDS.items()}


def _accepted() -> str:
    kinds = ", ".join(repr(k.value) for k in CombineKind)
    return (f"accepted: {kinds}, ir.Concat(dim), ir.Stack(dim), or one of the functions "
            f"{', '.join(FUNCTION_KINDS)}")


def combine_kind(spec: object) -> CombineKind:
    """The kind ``spec`` names: a ``CombineKind``, its value (``"max"``) or a matching torch function.

    >>> combine_kind("cat") is CombineKind.CONCAT
    True
    """
    if isinstance(spec, CombineKind):
        return spec
    if isinstance(spec, str):
        try:
            return CombineKind(spec)
        except ValueError:
            raise IRError(f"unknown combine {spec!r}; {_accepted()}") from None
    if callable(spec):
        kind = _function_table().get(id(spec))
        if kind is None:
            name = getattr(spec, "__qualname__", None) or repr(spec)
            raise IRError(f"combine function {name} is not one torchgraft can write faithfully; {_accepted()}")
        return kind
    raise IRError(f"combine {spec!r} is neither a kind name nor a function; {_accepted()}")


@dataclass(frozen=True, slots=True, init=False)
class Combine:
    """``Combine("add")``, ``Combine("cat", dim=1)``, ``Combine(torch.maximum)`` (stored as ``max``).

    ``dim`` is used by ``cat`` and ``stack`` only; the other kinds refuse a ``dim`` other than 1.
    """

    kind: CombineKind
    dim: int

    def __init__(self, kind: CombineKind | str | Callable[..., Any] = CombineKind.ADD, dim: int = 1) -> None:
        k = combine_kind(kind)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise IRError(f"Combine dim must be an int, got {dim!r}")
        if dim != 1 and not k.takes_dim:
            raise IRError(f"Combine({k.value!r}) joins elementwise and takes no dim (got dim={dim}); "
                          "only 'cat' and 'stack' take one")
        object.__setattr__(self, "kind", k)
        object.__setattr__(self, "dim", dim)

    def __str__(self) -> str:
        return f"{self.kind.value}(dim={self.dim})" if self.kind.takes_dim else self.kind.value


def Concat(dim: int) -> Combine:
    """Join by ``torch.cat`` along ``dim``: ``Parallel(a, b, combine=Concat(dim=1))``."""
    return Combine(CombineKind.CONCAT, dim)


def Stack(dim: int) -> Combine:
    """Join by ``torch.stack`` along ``dim``: ``Parallel(a, b, combine=Stack(dim=0))``."""
    return Combine(CombineKind.STACK, dim)


def as_combine(spec: Combine | CombineKind | str | Callable[..., Any]) -> Combine:
    """``spec`` as a Combine (a Combine stays as it is)."""
    return spec if isinstance(spec, Combine) else Combine(spec)


def combine_ops(combine: Combine, values: list[str], fresh: Callable[[str], str]) -> tuple[list[Op], str]:
    """The ops computing ``combine`` over the named ``values``, and the name of the result.

    ``fresh(base)`` gives an unused value name. Every kind is written out; there is no default.
    """
    kind = combine.kind
    if kind in JOIN_FUNCTIONS:
        name = fresh(kind.value)
        seq = Seq(tuple(Ref(v) for v in values), True)
        return [Op(name, FunctionCall(JOIN_FUNCTIONS[kind]), (seq, Const(combine.dim)))], name
    if kind not in FOLD_FUNCTIONS:
        raise IRError(f"combine kind {kind!r} has no lowering")
    ops: list[Op] = []
    acc = values[0]
    for v in values[1:]:
        name = fresh("sum" if kind is CombineKind.MEAN else kind.value)
        ops.append(Op(name, FunctionCall(FOLD_FUNCTIONS[kind]), (Ref(acc), Ref(v))))
        acc = name
    if kind is CombineKind.MEAN:
        name = fresh("mean")
        ops.append(Op(name, FunctionCall("operator.truediv"), (Ref(acc), Const(len(values)))))
        acc = name
    return ops, acc

"""How Parallel branches or a SkipConnection's two values are joined: ``Combine``.

Kinds and their meaning over values ``v0, v1, ...`` (a SkipConnection's are ``x, body(x)``):

* ``add``, ``sub``, ``mul``, ``max``, ``min``: folded left, ``((v0 - v1) - v2)``; ``max``/``min``
  are elementwise (``torch.maximum``/``torch.minimum``);
* ``mean``: the sum folded left, divided by the number of values;
* ``cat``/``stack``: ``torch.cat``/``torch.stack`` of the values along ``dim``;
* ``call``: an allow-listed binary function ``f`` (``Combine.fn``, a qualified name such as
  ``"torch.atan2"``) folded left: ``f(f(v0, v1), v2)``; a SkipConnection's is ``f(x, body(x))``.

Spell them ``Combine("max")``, ``combine="max"``, ``Concat(dim=1)``, ``Stack(dim=0)``, or with a
function: one that means a kind is stored as that kind (``Combine(torch.maximum) == Combine("max")``,
``Combine(operator.sub)``); any other is stored as ``call`` when both hold:

1. it is in the function allow-list (``torchgraft.ir.functions``: ``torch.*``, ``torch.nn.functional.*``,
   ``torch.linalg/fft/special.*``, ``operator.*``, ``math.*``, a few builtins) under a public name, found
   by identity (``qualname_of``), never by evaluating a string;
2. it takes two tensors positionally and returns a tensor without changing them: checked once per
   function (cached) by calling it on two small CPU tensors of shape (2, 2) (float32, then int64, then
   bool, so bitwise functions pass), under ``torch.no_grad`` with the global RNG state restored.
   Functions named ``set_*``/``use_*``/``enable_*``/``disable_*`` or private (``_*``) are refused
   without being called, as they change global state.

So ``Combine(torch.atan2)``, ``Combine(torch.logaddexp)``, ``Combine(torch.bitwise_and)`` are accepted;
a lambda, ``os.system``, ``torch.relu`` (one argument) or ``torch.lerp`` (needs a weight) are refused
when the Combine is built, with the list of kinds and this rule. ``Combine("call", fn="torch.atan2")``,
what the JSON form holds, checks only the name's shape, so that reading JSON calls nothing: the
allow-list is checked by ``verify``/``emit`` (``ir.codecheck``), as for ``FunctionCall``.
"""

from __future__ import annotations

import enum
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from torchgraft.errors import IRError
from torchgraft.ir.functions import qualname_of, resolve
from torchgraft.ir.graph import FunctionCall, Op
from torchgraft.ir.opkinds import FUNCTIONS, TRAITS
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
    CALL = "call"

    @property
    def commutative(self) -> bool:
        """True when the order of the values cannot change the result, bit for bit (add, mul, mean of two);
        not max/min: on equal values they return their first argument, so ``maximum(-0.0, 0.0)`` is -0.0 and
        ``maximum(0.0, -0.0)`` is 0.0. ``call`` answers per function (``Combine.commutative``)."""
        return self in (CombineKind.ADD, CombineKind.MUL, CombineKind.MEAN)

    @property
    def takes_dim(self) -> bool:
        """True for ``cat`` and ``stack``, which join along a dimension."""
        return self in (CombineKind.CONCAT, CombineKind.STACK)


FOLD_FUNCTIONS: dict[CombineKind, str] = {
    CombineKind.ADD: "operator.add", CombineKind.SUB: "operator.sub", CombineKind.MUL: "operator.mul",
    CombineKind.MAX: "torch.maximum", CombineKind.MIN: "torch.minimum", CombineKind.MEAN: "operator.add"}
"""The binary function each folded kind applies left to right (``mean`` then divides by the count)."""

IN_PLACE_FUNCTIONS: dict[CombineKind, str] = {CombineKind.ADD: "operator.iadd", CombineKind.MUL: "operator.imul"}
"""The in-place operator of each kind that can join in place (``Combine.in_place``)."""

JOIN_FUNCTIONS: dict[CombineKind, str] = {CombineKind.CONCAT: "torch.cat", CombineKind.STACK: "torch.stack"}
"""The function each kind with a ``dim`` calls on the list of values."""

FUNCTION_KINDS: dict[str, CombineKind] = {
    name: CombineKind(TRAITS[k.kind].combine) for name, k in FUNCTIONS.items()
    if TRAITS[k.kind].combine and not k.in_place}
"""Allow-listed functions that mean a kind, by qualified name, and the kind each stands for (from the op
kind table, ``ir/opkinds.py``: ``operator.add``, ``torch.add``, ``torch.maximum``, ``torch.cat``, ...)."""

COMMUTATIVE_CALLS = frozenset({
    "torch.bitwise_and", "torch.bitwise_or", "torch.bitwise_xor", "torch.logical_and", "torch.logical_or",
    "torch.logical_xor", "torch.gcd", "torch.lcm", "operator.and_", "operator.or_", "operator.xor"})
"""``call`` functions whose operands can be swapped exactly (integer and boolean ones); any other ``call``
is treated as order-sensitive (``atan2`` is not symmetric; float ones may round differently)."""

_T = TypeVar("_T")
_STATEFUL_PREFIXES = ("set_", "use_", "enable_", "disable_", "_")


@functools.lru_cache(maxsize=1)
def _function_table() -> dict[int, CombineKind]:
    return {id(resolve(name)): kind for name, kind in FUNCTION_KINDS.items()}


def _accepted() -> str:
    kinds = ", ".join(repr(k.value) for k in CombineKind if k is not CombineKind.CALL)
    return (f"accepted: {kinds}, ir.Concat(dim), ir.Stack(dim), one of the functions "
            f"{', '.join(FUNCTION_KINDS)}, or another function of the allow-list (torchgraft.ir.functions) "
            "that takes two tensors positionally and returns a tensor, folded left as f(f(v0, v1), v2)")


def _probe_tensors() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    a = torch.tensor([[0.25, 1.5], [2.0, 3.0]])
    b = torch.tensor([[0.5, 1.0], [3.5, 2.5]])
    return (a, b), (torch.tensor([[6, 3], [4, 9]]), torch.tensor([[4, 2], [6, 3]])), (a > 1, b > 1)


@functools.lru_cache(maxsize=256)
def binary_problem(qualname: str) -> str | None:
    """Why the allow-listed ``qualname`` cannot fold two tensors, or None when it can (module docstring, rule 2).

    >>> binary_problem("torch.atan2") is None
    True
    """
    fn = resolve(qualname)
    if qualname.rpartition(".")[2].startswith(_STATEFUL_PREFIXES):
        return "it is private or changes global state, so it is not called to check it"
    why = "it returned no tensor"
    for a, b in _probe_tensors():
        before = (a.clone(), b.clone())
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fn(a, b)
        except Exception as e:  # noqa: BLE001 - any failure means "not a function of two tensors"
            first = (str(e).splitlines() or [""])[0][:120]
            why = f"calling it on two tensors failed ({type(e).__name__}: {first})"
            continue
        if not (torch.equal(a, before[0]) and torch.equal(b, before[1])):
            return "it changes its arguments in place"
        if isinstance(out, torch.Tensor):
            return None
        why = f"it returned a {type(out).__name__}, not a tensor"
    return why


def _from_function(spec: Callable[..., Any]) -> tuple[CombineKind, str]:
    kind = _function_table().get(id(spec))
    if kind is not None:
        return kind, ""
    label = ".".join(str(p) for p in (getattr(spec, "__module__", None), getattr(spec, "__qualname__", None))
                     if p) or repr(spec)
    name = qualname_of(spec)
    if name is None:
        raise IRError(f"combine function {label} is not in torchgraft's function allow-list, so it cannot be "
                      f"written as code; {_accepted()}")
    problem = binary_problem(name)
    if problem is not None:
        raise IRError(f"combine function {name} cannot join values: {problem}; {_accepted()}")
    return CombineKind.CALL, name


def parse_combine(spec: object) -> tuple[CombineKind, str]:
    """(kind, function name) for ``spec``: a ``CombineKind``, its value (``"max"``) or a function.

    >>> parse_combine(torch.atan2)
    (<CombineKind.CALL: 'call'>, 'torch.atan2')
    """
    if isinstance(spec, CombineKind):
        return spec, ""
    if isinstance(spec, str):
        try:
            return CombineKind(spec), ""
        except ValueError:
            raise IRError(f"unknown combine {spec!r}; {_accepted()}") from None
    if callable(spec):
        return _from_function(spec)
    raise IRError(f"combine {spec!r} is neither a kind name nor a function; {_accepted()}")


def combine_kind(spec: object) -> CombineKind:
    """The kind ``spec`` names: a ``CombineKind``, its value (``"max"``) or a function (``call`` when it
    means no other kind).

    >>> combine_kind("cat") is CombineKind.CONCAT
    True
    """
    return parse_combine(spec)[0]


def _check_fn(kind: CombineKind, fn: object) -> None:
    if not isinstance(fn, str):
        raise IRError(f"Combine fn must be a function's qualified name (a str), got {fn!r}")
    if kind is not CombineKind.CALL:
        if fn:
            raise IRError(f"Combine({kind.value!r}) takes no fn (got {fn!r}); only 'call' names a function")
        return
    if not fn or not all(p.isidentifier() for p in fn.split(".")) or "." not in fn:
        raise IRError(f"Combine('call') needs fn, the qualified name of an allow-listed function such as "
                      f"'torch.atan2'; got {fn!r}. Pass the function itself: Combine(torch.atan2)")
    if fn in FUNCTION_KINDS:
        raise IRError(f"Combine('call', fn={fn!r}) means the kind {FUNCTION_KINDS[fn].value!r}: "
                      f"write Combine({FUNCTION_KINDS[fn].value!r})")


@dataclass(frozen=True, slots=True, init=False)
class Combine:
    """``Combine("add")``, ``Combine("cat", dim=1)``, ``Combine(torch.maximum)`` (stored as ``max``),
    ``Combine(torch.atan2)`` (stored as ``call`` with ``fn="torch.atan2"``).

    ``dim`` is used by ``cat`` and ``stack`` only; the other kinds refuse a ``dim`` other than 1.
    ``fn`` is set for ``call`` only (see the module docstring for which functions are accepted).
    ``in_place`` (``add`` and ``mul`` only) writes the join into the first value, as ``out += identity`` does: the
    result keeps that value's dtype and shape (``out + identity`` would promote a float32 ``out`` to float64).
    The first value is a SkipConnection's body result (``skip_operands``) or a Parallel's first branch; it must be
    a tensor that branch made (``ir.aliasing``), which ``verify`` checks.
    """

    kind: CombineKind
    dim: int
    fn: str
    in_place: bool

    def __init__(self, kind: CombineKind | str | Callable[..., Any] = CombineKind.ADD, dim: int = 1,
                 fn: str = "", in_place: bool = False) -> None:
        k, named = parse_combine(kind)
        if named and fn:
            raise IRError(f"Combine: the function is given twice ({named} and fn={fn!r}); give it once")
        fn = named or fn
        _check_fn(k, fn)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise IRError(f"Combine dim must be an int, got {dim!r}")
        if dim != 1 and not k.takes_dim:
            what = fn if k is CombineKind.CALL else repr(k.value)
            raise IRError(f"Combine({what}) joins elementwise and takes no dim (got dim={dim}); "
                          "only 'cat' and 'stack' take one")
        if not isinstance(in_place, bool) or (in_place and k not in IN_PLACE_FUNCTIONS):
            raise IRError(f"Combine({k.value!r}, in_place={in_place!r}): only 'add' and 'mul' join in place "
                          "(out += x, out *= x); use in_place=False")
        object.__setattr__(self, "kind", k)
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "in_place", in_place)

    @property
    def commutative(self) -> bool:
        """True when swapping the values cannot change the result (``CombineKind.commutative``;
        for ``call``, only the functions in ``COMMUTATIVE_CALLS``)."""
        return self.fn in COMMUTATIVE_CALLS if self.kind is CombineKind.CALL else self.kind.commutative

    def __str__(self) -> str:
        if self.kind is CombineKind.CALL:
            return self.fn
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
    if combine.in_place:
        return _fold(IN_PLACE_FUNCTIONS[kind], kind.value, values, fresh)
    if kind is CombineKind.CALL:
        return _fold(combine.fn, combine.fn.rpartition(".")[2], values, fresh)
    if kind in JOIN_FUNCTIONS:
        name = fresh(kind.value)
        seq = Seq(tuple(Ref(v) for v in values), True)
        return [Op(name, FunctionCall(JOIN_FUNCTIONS[kind]), (seq, Const(combine.dim)))], name
    if kind not in FOLD_FUNCTIONS:
        raise IRError(f"combine kind {kind!r} has no lowering")
    ops, acc = _fold(FOLD_FUNCTIONS[kind], "sum" if kind is CombineKind.MEAN else kind.value, values, fresh)
    if kind is CombineKind.MEAN:
        name = fresh("mean")
        ops.append(Op(name, FunctionCall("operator.truediv"), (Ref(acc), Const(len(values)))))
        acc = name
    return ops, acc


def skip_operands(combine: Combine, x: _T, y: _T) -> list[_T]:
    """The two values a SkipConnection joins, in the order its lowering and the interpreter pass them: ``x, y``
    (``x + body(x)``, ``x - body(x)``), except for an in-place join, which writes into the body's result and
    never into the input: ``y, x`` (``out = body(x); out += x``; add and mul commute exactly)."""
    return [y, x] if combine.in_place else [x, y]


def _fold(qualname: str, base: str, values: list[str], fresh: Callable[[str], str]) -> tuple[list[Op], str]:
    """``f(f(v0, v1), v2)`` as ops calling ``qualname``, each named ``fresh(base)``; the last name."""
    ops: list[Op] = []
    acc = values[0]
    for v in values[1:]:
        name = fresh(base)
        ops.append(Op(name, FunctionCall(qualname), (Ref(acc), Ref(v))))
        acc = name
    return ops, acc

"""The op kind table (``ir/opkinds.py``): one kind per computation, whatever its spelling.

Checks that every spelling of addition is ADD (in place where it writes), that every listed function is
allow-listed and really computes its kind on tensors, that negations are exact, and that the users of
the table (structure recognition, effects, emission) read the same facts from it.
"""

from __future__ import annotations

import operator

import pytest
import torch

from torchgraft.ir.combine import FUNCTION_KINDS, CombineKind
from torchgraft.ir.effects import augmented_symbol, in_place, is_pure
from torchgraft.ir.functions import resolve
from torchgraft.ir.graph import FunctionCall, MethodCall, Op
from torchgraft.ir.opkinds import (
    FUNCTIONS,
    TENSOR_METHODS,
    TRAITS,
    Kinded,
    OpKind,
    is_kind,
    kind_of,
    method_kind,
    negated,
    spelling,
    symbol_of,
)
from torchgraft.ir.values import Const, Ref


def _call(qualname: str, *args: object) -> Op:
    return Op("out", FunctionCall(qualname), tuple(Ref(a) if isinstance(a, str) else Const(a) for a in args))


def test_every_spelling_of_add_is_one_kind() -> None:
    assert kind_of(_call("operator.add", "a", "b")) == Kinded(OpKind.ADD)
    assert kind_of(_call("torch.add", "a", "b")) == Kinded(OpKind.ADD)
    assert kind_of(_call("operator.iadd", "a", "b")) == Kinded(OpKind.ADD, in_place=True)
    assert method_kind("add") == Kinded(OpKind.ADD) and method_kind("add_") == Kinded(OpKind.ADD, True)
    assert kind_of(Op("out", MethodCall("add"), (Ref("a"), Ref("b")))) is None  # receiver may not be a tensor
    assert kind_of(Op("out", MethodCall("size"), (Ref("a"),))) == Kinded(OpKind.SIZE)  # metadata: any receiver
    assert TRAITS[OpKind.ADD].combine == "add" and FUNCTION_KINDS["torch.add"] is CombineKind.ADD


@pytest.mark.parametrize("qualname", sorted(FUNCTIONS))
def test_every_listed_function_is_allow_listed(qualname: str) -> None:
    resolve(qualname)  # raises IRError when the table names a function emission could not call


_BINARY = {OpKind.ADD: torch.add, OpKind.SUB: torch.sub, OpKind.MUL: torch.mul, OpKind.TRUEDIV: torch.true_divide,
           OpKind.MAXIMUM: torch.maximum, OpKind.MINIMUM: torch.minimum, OpKind.EQ: torch.eq, OpKind.NE: torch.ne,
           OpKind.LT: torch.lt, OpKind.LE: torch.le, OpKind.GT: torch.gt, OpKind.GE: torch.ge,
           OpKind.FLOORDIV: torch.floor_divide, OpKind.POW: torch.pow, OpKind.MATMUL: torch.matmul}


@pytest.mark.parametrize("qualname", sorted(q for q, k in FUNCTIONS.items() if k.kind in _BINARY))
def test_spellings_of_a_kind_compute_the_same(qualname: str) -> None:
    """Every binary spelling equals its kind's reference on tensors (in place: into its first argument)."""
    found = FUNCTIONS[qualname]
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, generator=g) + 0.5, torch.rand(3, 3, generator=g) + 0.5
    expected = _BINARY[found.kind](a, b)
    target = a.clone()
    got = resolve(qualname)(target, b)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    if got is target:  # an in-place spelling wrote into its first argument
        assert found.in_place
    elif found.in_place:  # operator.imatmul: Tensor has no __imatmul__, so Python computes a @ b
        torch.testing.assert_close(target, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(n for n, k in TENSOR_METHODS.items() if k.kind in _BINARY))
def test_tensor_methods_compute_their_kind(name: str) -> None:
    found = TENSOR_METHODS[name]
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
    expected = _BINARY[found.kind](a, b)
    target = a.clone()
    torch.testing.assert_close(getattr(target, name)(b), expected, rtol=0, atol=0)
    assert torch.equal(target, expected if found.in_place else a)


@pytest.mark.parametrize("kind", [k for k in OpKind if TRAITS[k].negation is not None])
def test_negations_are_exact(kind: OpKind) -> None:
    op = _call(spelling(kind), "a", "b")
    flipped = negated(op)
    assert flipped is not None and negated(flipped) == op
    for a, b in ((1, 2), (2, 2), (3, 2), (None, None), (None, 1)):
        try:
            want = resolve(spelling(kind))(a, b)
        except TypeError:
            continue  # None < 1
        assert resolve(flipped.target.qualname)(a, b) is (not want)  # type: ignore[union-attr]


def test_effects_and_spelling_read_the_table() -> None:
    assert in_place(_call("operator.iadd", "a", "b")) and not in_place(_call("operator.is_", "a", None))
    assert not in_place(_call("operator.invert", "a"))  # starts with "i", computes out of place
    assert in_place(Op("o", MethodCall("mul_"), (Ref("a"), Const(2)))) and in_place(_call("torch.relu_", "a"))
    assert not is_pure(_call("operator.setitem", "a", 0, 1)) and not is_pure(_call("operator.delitem", "a", 0))
    assert augmented_symbol(_call("operator.ifloordiv", "a", "b")) == "//="
    assert symbol_of(_call("operator.matmul", "a", "b")) == "@" and symbol_of(_call("torch.add", "a", "b")) == ""
    assert spelling(OpKind.ADD, in_place=True) == "operator.iadd"
    assert is_kind(_call("torch.nn.functional.dropout2d", "a"), OpKind.DROPOUT)
    assert not is_kind(_call("torch.batch_norm", "a"), OpKind.BATCH_NORM)  # another argument order
    assert resolve("operator.iadd") is operator.iadd

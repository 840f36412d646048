"""``ir.effects.is_pure``: a draw from the RNG is an effect (later draws depend on it), so an unused draw is
never dropped; plain factories and arithmetic stay pure."""

from __future__ import annotations

import pytest

from torchgraft.ir.effects import is_pure
from torchgraft.ir.graph import FunctionCall, MethodCall, Op
from torchgraft.ir.values import Const, Ref


@pytest.mark.parametrize("qualname", ["torch.rand", "torch.randn", "torch.randint", "torch.rand_like",
                                      "torch.bernoulli", "torch.manual_seed", "torch.nn.functional.dropout"])
def test_draws_are_effects(qualname: str) -> None:
    assert not is_pure(Op("r", FunctionCall(qualname), (Const(3),)))


def test_method_draws_are_effects_and_factories_are_pure() -> None:
    assert not is_pure(Op("r", MethodCall("bernoulli"), (Ref("p"),)))
    assert is_pure(Op("z", FunctionCall("torch.zeros"), (Const(3),)))
    assert is_pure(Op("a", FunctionCall("operator.add"), (Ref("x"), Ref("y"))))


def test_container_writes_are_effects() -> None:
    """``copied.append(x)`` returns nothing and changes the list: pruning it returned a shorter list."""
    from torchgraft.ir.effects import is_pure, pruned
    from torchgraft.ir.graph import Graph, Input, MethodCall, Op
    from torchgraft.ir.types import ScalarType, TensorType
    from torchgraft.ir.values import Const, Ref

    for name in ("append", "extend", "insert", "pop", "update", "setdefault", "clear"):
        assert not is_pure(Op("w", MethodCall(name), (Ref("items"), Ref("x"))))
    assert not is_pure(Op("w", MethodCall("add"), (Ref("seen"), Const(1)), type=ScalarType("None")))  # set.add
    assert is_pure(Op("w", MethodCall("add"), (Ref("x"), Ref("x")), type=TensorType(("N",))))  # tensor.add
    g = Graph((Input("items"), Input("x")), (Op("a", MethodCall("append"), (Ref("items"), Ref("x"))),),
              Ref("items"))
    assert len(pruned(g).ops) == 1

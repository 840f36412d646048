"""``backends.torch.tuples.whole_tuples``: ``(t[0], t[1])`` is written ``t`` only when ``t`` is a tuple of
exactly those items, in order."""

from __future__ import annotations

import pytest

from torchgraft.backends.torch.tuples import whole_tuples
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, Op
from torchgraft.ir.types import ScalarType, TensorType
from torchgraft.ir.values import Const, Ref, Seq

T = TensorType((1, 7, 8))


def _graph(kind: str, count: int, order: tuple[int, ...], is_list: bool = False) -> Graph:
    ops = [Op(f"i{k}", FunctionCall("operator.getitem"), (Ref("pe"), Const(k)), type=T) for k in sorted(set(order))]
    call = Op("out", ChildCall("attn"), (), (("pe", Seq(tuple(Ref(f"i{k}") for k in order), is_list)),))
    return Graph((Input("pe", ScalarType(kind, (T,) * count)),), (*ops, call), Ref("out"))


def _passed(g: Graph) -> object:
    return dict(whole_tuples(g).ops[-1].kwargs)["pe"]


def test_a_tuple_rebuilt_whole_is_the_tuple() -> None:
    assert _passed(_graph("tuple", 2, (0, 1))) == Ref("pe")


@pytest.mark.parametrize(("kind", "count", "order", "is_list"), [
    ("tuple", 3, (0, 1), False),  # not every item
    ("tuple", 2, (1, 0), False),  # another order
    ("tuple", 2, (0, 0), False),  # an item twice
    ("list", 2, (0, 1), False),  # a list is not a tuple
    ("tuple", 2, (0, 1), True),  # rebuilt as a list
    ("unknown", 0, (0, 1), False),  # the type is not known
])
def test_anything_else_is_left_as_written(kind: str, count: int, order: tuple[int, ...], is_list: bool) -> None:
    g = _graph(kind, count, order, is_list)
    assert _passed(g) == dict(g.ops[-1].kwargs)["pe"]

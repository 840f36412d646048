"""Construction-time validation of IR nodes: bad fields fail at once, with a clear message."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from torchgraft import ir
from torchgraft.errors import IRError
from torchgraft.ir import (
    Activation,
    ActKind,
    Block,
    Chain,
    ChildCall,
    ChildRef,
    ClassRef,
    Combine,
    CombineKind,
    Const,
    Container,
    Conv,
    FunctionCall,
    Graph,
    Input,
    MethodCall,
    Model,
    Op,
    Opaque,
    Parallel,
    Ref,
    Seq,
    SkipConnection,
    StateSpec,
    TensorType,
    TorchLayer,
    module_children,
)
from torchgraft.ir.values import refs_in, rename_refs

CLS = ClassRef("demo", "M")


def _graph(*ops: Op, output: str = "x") -> Graph:
    return Graph((Input("x"),), tuple(ops), Ref(output))


# ------------------------------------------------------------------------------------------- primitives

@pytest.mark.parametrize("make, match", [
    (lambda: Conv("Conv2d", 3, 16, (3, 3), groups=2), "divisible by groups=2"),
    (lambda: Conv("Conv2d", 4, 6, (3, 3), groups=4), "divisible by groups=4"),
    (lambda: Conv("Linear", 3, 16), "not one of"),
    (lambda: Conv("Conv2d", 3, 16, (0, 3)), "kernel_size must be a positive int"),
    (lambda: Conv("Conv2d", 0, 16), "in_channels must be a positive int"),
    (lambda: Conv("Conv2d", True, 16), "in_channels must be a positive int"),
    (lambda: ir.LinearOp("Linear", 0, 4), "in_features"),
    (lambda: ir.BatchNorm("BatchNorm2d", -1), "num_features"),
    (lambda: ir.BatchNorm("BatchNorm4d", 8), "not one of"),
    (lambda: ir.GroupNorm("GroupNorm", 3, 8), "not divisible by num_groups=3"),
    (lambda: ir.LayerNormOp("LayerNorm", (0,)), "normalized_shape"),
    (lambda: ir.DropoutOp("Dropout", 1.5), r"must be in \[0, 1\]"),
    (lambda: TorchLayer("NotALayer"), "is not a torch.nn layer class"),
    (lambda: TorchLayer("functional"), "is not a torch.nn layer class"),
    (lambda: Activation("GELU", ActKind.RELU), "does not match kind RELU"),
    (lambda: Activation.of(ActKind.LEAKY_RELU, negative_slop=0.2), "has no option 'negative_slop'"),
    (lambda: Activation.of(ActKind.RELU, alpha=1.0), "has no option 'alpha'"),
])
def test_bad_primitives_fail_on_construction(make, match) -> None:  # noqa: ANN001
    with pytest.raises(IRError, match=match):
        make()


def test_primitive_labels_read_like_torch() -> None:
    assert ir.Conv2d(3, 16, 3, padding=1, bias=False).label() == "Conv2d(3, 16, kernel_size=3, padding=1, bias=False)"
    assert ir.LinearLayer(16, 10).label() == "Linear(16, 10)"
    assert ir.BatchNorm2d(16).label() == "BatchNorm2d(16)"
    assert ir.ReLU().label() == "ReLU"
    assert Activation.of(ActKind.LEAKY_RELU, negative_slope=0.2).label() == "LeakyReLU(negative_slope=0.2)"
    assert ir.Dropout(0.1).label() == "Dropout(0.1)"


def test_primitive_state_lists_parameters_and_buffers() -> None:
    names = [(n, shape, p) for n, shape, p in ir.BatchNorm2d(4).state()]
    assert names == [("weight", (4,), True), ("bias", (4,), True), ("running_mean", (4,), False),
                     ("running_var", (4,), False), ("num_batches_tracked", (), False)]
    assert ir.Conv2d(3, 8, 3, bias=False).state() == (("weight", (8, 3, 3, 3), True),)
    assert ir.ReLU().state() == ()


def test_activation_kinds_parse_and_reject_typos() -> None:
    assert ActKind.parse("relu") is ActKind.RELU
    assert ActKind.parse("LeakyReLU") is ActKind.LEAKY_RELU
    assert ActKind.parse("leaky-relu") is ActKind.LEAKY_RELU
    with pytest.raises(ValueError, match="unknown activation 'rleu'"):
        ActKind.parse("rleu")


def test_nodes_are_frozen() -> None:
    conv = ir.Conv2d(3, 8, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv.in_channels = 4  # type: ignore[misc]
    chain = Chain(conv, ir.ReLU())
    with pytest.raises(AttributeError, match="immutable"):
        chain.items = ()  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- types and values

@pytest.mark.parametrize("shape, dtype, match", [
    (("N", -1), "float32", "must be a size >= 0"),
    (("N", True), "float32", "must be a size >= 0"),
    (("N", 2.0), "float32", "must be a size >= 0"),
    (("N**2", 3), "float32", "must be an identifier"),
    (["N", 3], "float32", "must be a tuple"),
    (("N", 3), "float 32", "unknown dtype"),
])
def test_bad_tensor_types(shape, dtype, match) -> None:  # noqa: ANN001
    with pytest.raises(IRError, match=match):
        TensorType(shape, dtype)


def test_tensor_type_text() -> None:
    assert str(TensorType(("N", 3, 32, 32))) == "f32[N, 3, 32, 32]"
    assert str(TensorType(("N",), "int64", "cuda")) == "i64[N]@cuda"
    assert str(ir.ScalarType("tuple", (TensorType((2,)), ir.ScalarType("int")))) == "tuple[f32[2], int]"
    assert TensorType(("N", 3)).rank == 2


@pytest.mark.parametrize("value", [[1], {"a": 1}, torch.zeros(1), object(), slice(1, 2)])
def test_const_of_unsupported_type(value) -> None:  # noqa: ANN001
    with pytest.raises(IRError, match="is not supported"):
        Const(value)


def test_const_equality_keeps_types_apart() -> None:
    assert Const(1) != Const(True)
    assert Const(1) != Const(1.0)
    assert Const(0) != Const(False)
    assert Const(math.nan) == Const(math.nan)
    assert Const(torch.float16) == Const(torch.float16)
    assert len({Const(1), Const(True), Const(1.0)}) == 3


def test_ref_needs_a_name() -> None:
    with pytest.raises(IRError, match="non-empty string"):
        Ref("")


def test_refs_in_and_rename() -> None:
    arg = Seq((Ref("a"), ir.Slice(Const(None), Ref("n"), Const(None)), Const(1)), is_list=True)
    assert refs_in(arg) == ["a", "n"]
    assert refs_in(rename_refs(arg, {"a": "b"})) == ["b", "n"]


# ------------------------------------------------------------------------------------------- graphs

@pytest.mark.parametrize("name", ["not valid", "class", "1x"])
def test_method_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(IRError, match="is not an identifier"):
        MethodCall(name)


def test_op_validation() -> None:
    with pytest.raises(IRError, match="must be an identifier"):
        Op("a-b", FunctionCall("torch.relu"), (Ref("x"),))
    with pytest.raises(IRError, match="needs the object as first arg"):
        Op("v", MethodCall("view"))
    with pytest.raises(IRError, match="must be an identifier"):
        Input("def")


def test_graph_reading_undefined_values() -> None:
    with pytest.raises(IRError, match="reads 'y' before it is defined"):
        _graph(Op("a", FunctionCall("torch.relu"), (Ref("y"),)))
    with pytest.raises(IRError, match="reads 'b' before it is defined"):
        _graph(Op("a", FunctionCall("torch.add"), (Ref("x"), Seq((Ref("b"),)))),
               Op("b", FunctionCall("torch.relu"), (Ref("x"),)))
    with pytest.raises(IRError, match="output reads undefined value 'z'"):
        _graph(output="z")


def test_graph_names_are_unique() -> None:
    with pytest.raises(IRError, match="defined twice in the graph"):
        _graph(Op("a", FunctionCall("torch.relu"), (Ref("x"),)), Op("a", FunctionCall("torch.relu"), (Ref("x"),)))
    with pytest.raises(IRError, match="input 'x' is defined twice"):
        Graph((Input("x"), Input("x")), (), Ref("x"))
    with pytest.raises(IRError, match="defined twice"):
        _graph(Op("x", FunctionCall("torch.relu"), (Ref("x"),)))


def test_graph_users() -> None:
    g = _graph(Op("a", FunctionCall("torch.relu"), (Ref("x"),)),
               Op("b", FunctionCall("operator.add"), (Ref("a"), Ref("x"))), output="b")
    assert g.users() == {"x": ["a", "b"], "a": ["b"], "b": ["<output>"]}
    assert g.ops[1].reads() == ["a", "x"]


# ------------------------------------------------------------------------------------------- structure

def test_chain_names() -> None:
    c = Chain(ir.ReLU(), ir.Tanh())
    assert c.names == ("0", "1")
    assert Chain([ir.ReLU(), ir.Tanh()]) == c  # type: ignore[arg-type]
    assert hash(Chain(ir.ReLU(), ir.Tanh())) == hash(c)
    assert Chain(ir.ReLU(), ir.Tanh(), names=("a", "b")) != c
    with pytest.raises(IRError, match="2 items but 1 names"):
        Chain(ir.ReLU(), ir.Tanh(), names=("a",))
    with pytest.raises(IRError, match="must be unique"):
        Chain(ir.ReLU(), ir.Tanh(), names=("a", "a"))
    with pytest.raises(IRError, match="is not an IR node"):
        Chain(ir.ReLU(), "relu")  # type: ignore[arg-type]


def test_parallel_needs_two_branches() -> None:
    with pytest.raises(IRError, match="at least two branches, got 1"):
        Parallel((ir.ReLU(),))
    p = Parallel((ir.ReLU(), ir.Tanh()), "cat")  # type: ignore[arg-type]
    assert p.combine == Combine(CombineKind.CONCAT, 1)
    assert str(p.combine) == "cat(dim=1)"
    assert p.names == ("0", "1")


def test_unknown_combine() -> None:
    with pytest.raises(IRError, match="unknown combine 'bogus'"):
        Combine("bogus")
    with pytest.raises(IRError, match="unknown combine"):
        SkipConnection(ir.ReLU(), "maximum")  # type: ignore[arg-type]


def test_skip_connection_body_must_be_a_node() -> None:
    with pytest.raises(IRError, match="is not an IR node"):
        SkipConnection("relu")  # type: ignore[arg-type]


def test_block_member_names_are_unique() -> None:
    body = ChildRef("a")
    with pytest.raises(IRError, match=r"duplicate member names \['a'\]"):
        Block(CLS, (("a", ir.ReLU()), ("a", ir.Tanh())), body)
    with pytest.raises(IRError, match=r"duplicate member names \['w'\]"):
        Block(CLS, (("w", ir.ReLU()),), body, state=(StateSpec("w", (3,)),))
    with pytest.raises(IRError, match="body 'a' is not an IR node"):
        Block(CLS, (("a", ir.ReLU()),), "a")  # type: ignore[arg-type]
    block = Block(CLS, (("a", ir.ReLU()),), body)
    assert block.child("a") == ir.ReLU()
    with pytest.raises(KeyError, match="has no child 'b'"):
        block.child("b")


def test_container_validation() -> None:
    with pytest.raises(IRError, match="must be 'ModuleList' or 'ModuleDict'"):
        Container("ParameterList", ())
    with pytest.raises(IRError, match="named '0', '1', ... in order"):
        Container("ModuleList", (("1", ir.ReLU()), ("0", ir.Tanh())))
    d = Container("ModuleDict", (("b", ir.ReLU()), ("a", ir.Tanh())))
    assert [n for n, _ in module_children(d)] == ["b", "a"]


def test_module_children() -> None:
    skip = SkipConnection(ir.ReLU())
    assert module_children(skip) == (("body", ir.ReLU()),)
    assert module_children(ir.ReLU()) == ()
    assert module_children(Opaque(CLS, "no")) == ()


def test_model_validation() -> None:
    with pytest.raises(IRError, match="must be an identifier"):
        Model("my model", ir.ReLU())
    with pytest.raises(IRError, match="is not an IR node"):
        Model("M", "relu")  # type: ignore[arg-type]
    m = Model("M", ir.ReLU(), types=(("", TensorType(("N", 3))),))
    assert m.type_at("") == TensorType(("N", 3))
    assert m.type_at("missing") == ir.UNKNOWN
    assert m.with_root(ir.Tanh()).root == ir.Tanh()


def test_equal_trees_compare_equal_and_hash_alike() -> None:
    def make() -> Block:
        g = Graph((Input("x"),), (Op("a", ChildCall("a"), (Ref("x"),)),), Ref("a"))
        return Block(CLS, (("a", Chain(ir.Conv2d(3, 3, 1), ir.ReLU())),), g)

    assert make() == make()
    assert hash(make()) == hash(make())

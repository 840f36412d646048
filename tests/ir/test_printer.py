"""The IR's text form: golden output for small models, labels, forward lines, determinism."""

from __future__ import annotations

from dataclasses import replace

from torchgraft import ir
from torchgraft.ir import (
    Activation,
    ActKind,
    Block,
    Chain,
    ChildCall,
    ChildRef,
    ClassRef,
    Const,
    Container,
    FunctionCall,
    GetAttr,
    Graph,
    Input,
    InputKind,
    MethodCall,
    Model,
    Op,
    Opaque,
    Parallel,
    PrimCall,
    Ref,
    Seq,
    SkipConnection,
    Slice,
    Spelling,
    TensorType,
    Training,
)
from torchgraft.ir.printer import format_arg, format_model, format_node, format_op, kind_label

TINY = """\
model Tiny(x: f32[N, 3, 8, 8]) -> f32[N, 10]
  | forward(x: f32[N, 3, 8, 8]):
  |   conv = conv(x)
  |   bn = bn(conv)
  |   relu = F.relu(bn)
  |   mean = relu.mean((2, 3))
  |   fc = fc(mean)
  |   return fc
  conv  Conv2d(3, 8, kernel_size=3, padding=1, bias=False)  f32[N, 8, 8, 8]
  bn    BatchNorm2d(8)                                      f32[N, 8, 8, 8]
  fc    Linear(8, 10)                                       f32[N, 10]"""

NET = """\
model Net(x: f32[N, 3, 32, 32]) -> f32[N, 10]
  stem    Chain                                                    f32[N, 16, 32, 32]
    0  Conv2d(3, 16, kernel_size=3, padding=1, bias=False)         f32[N, 16, 32, 32]
    1  BatchNorm2d(16)                                             f32[N, 16, 32, 32]
    2  ReLU                                                        f32[N, 16, 32, 32]
  blocks  Chain x2 of Block<BasicBlock>                            f32[N, 16, 32, 32]
    0  Block<BasicBlock>                                           f32[N, 16, 32, 32]
      conv1  Conv2d(16, 16, kernel_size=3, padding=1, bias=False)  f32[N, 16, 32, 32]
      bn1    BatchNorm2d(16)                                       f32[N, 16, 32, 32]
      relu   ReLU(inplace=True)                                    f32[N, 16, 32, 32]
      conv2  Conv2d(16, 16, kernel_size=3, padding=1, bias=False)  f32[N, 16, 32, 32]
      bn2    BatchNorm2d(16)                                       f32[N, 16, 32, 32]
    1  Block<BasicBlock> (same as 0)                               f32[N, 16, 32, 32]
  pool    AdaptiveAvgPool2d(output_size=1)                         f32[N, 16, 1, 1]
  fc      Linear(16, 10)                                           f32[N, 10]"""


def test_tiny_golden(tiny: Model) -> None:
    assert format_model(tiny) == TINY
    assert str(tiny) == TINY


def test_captured_net_golden(net_ir: Model) -> None:
    assert format_model(net_ir, forward=False) == NET


def test_captured_net_block_forward(net_ir: Model) -> None:
    text = str(net_ir)
    assert "\n  |   flatten = torch.flatten(pool, 1)\n" in text
    # a forward that is only structure prints as its formula (issue 11: structure shown, not graph lines)
    block_forward = "      | forward: Chain(SkipConnection(add, Chain(conv1, bn1, relu, conv2, bn2)), relu)\n"
    assert block_forward in text
    assert text.count("| forward(") == 1 and text.count("| forward: ") == 1  # blocks.1 is "(same as 0)"


def test_resnet18(resnet18_ir: Model) -> None:
    text = str(resnet18_ir)
    assert text == str(resnet18_ir)
    assert text.splitlines()[0] == "model ResNet(x: f32[N, 3, 64, 64]) -> f32[N, 1000]"
    assert "Block<BasicBlock>" in text
    assert "layer1   Chain x2 of Block<BasicBlock>" in text
    assert "|   flatten = torch.flatten(avgpool, 1)" in text
    assert "| forward: Chain(SkipConnection(add, Chain(conv1, bn1, relu, conv2, bn2)), relu)" in text
    assert "| forward: Chain(Parallel(add, Chain(conv1, bn1, relu, conv2, bn2), downsample), relu)" in text
    fc = next(line for line in text.splitlines() if line.startswith("  fc "))
    assert fc.split() == ["fc", "Linear(512,", "1000)", "f32[N,", "1000]"]


def test_depth_limits_nesting(resnet18_ir: Model, net_ir: Model) -> None:
    top = format_model(resnet18_ir, depth=1, forward=False).splitlines()
    assert len(top) == 1 + 10
    assert all(line.startswith("  ") and not line.startswith("   ") for line in top[1:])
    assert format_model(net_ir, depth=0, forward=False) == "model Net(x: f32[N, 3, 32, 32]) -> f32[N, 10]"
    two = format_model(net_ir, depth=2, forward=False)
    assert "    0  Block<BasicBlock>" in two and "conv1" not in two


def test_long_graphs_are_cut() -> None:
    ops = [Op("v0", FunctionCall("torch.relu"), (Ref("x"),))]
    ops += [Op(f"v{i}", FunctionCall("torch.relu"), (Ref(f"v{i - 1}"),)) for i in range(1, 15)]
    block = Block(ClassRef("m", "Long"), (), Graph((Input("x"),), tuple(ops), Ref("v14")))
    lines = format_node(block).splitlines()
    assert lines[0] == "Block<Long>"
    assert lines[1] == "  | forward(x):"
    assert lines[-3] == "  |   v9 = torch.relu(v8)"
    assert lines[-2] == "  |   ... (5 more ops)"
    assert lines[-1] == "  |   return v14"
    assert len(lines) == 1 + 1 + 10 + 2
    short = replace(block, body=Graph((Input("x"),), tuple(ops[:12]), Ref("v11")))
    assert "more ops" not in format_node(short)


def test_kind_labels() -> None:
    cls = ClassRef("pkg.mod", "Outer.Inner")
    block = Block(cls, (("a", ir.ReLU()),), ChildRef("a"))
    assert kind_label(block) == "Block<Inner>"
    assert kind_label(replace(block, train_body=ChildRef("a"))) == "Block<Inner> [train/eval differ]"
    assert kind_label(Chain(block, block, block)) == "Chain x3 of Block<Inner>"
    assert kind_label(Chain(block, ir.ReLU())) == "Chain"
    assert kind_label(Container("ModuleList", tuple((str(i), ir.ReLU()) for i in range(4)))) == "ModuleList[4]"
    assert kind_label(Container("ModuleDict", (("q", ir.ReLU()), ("k", ir.Tanh())))) == "ModuleDict[q, k]"
    many = Container("ModuleDict", tuple((c, ir.ReLU()) for c in "abcdef"))
    assert kind_label(many) == "ModuleDict[a, b, c, d, ...]"
    assert kind_label(Opaque(ClassRef("x", "Weird"), "fx failed: data-dependent\nmore")) == \
        "Opaque<Weird> (fx failed: data-dependent)"
    assert kind_label(Opaque(ClassRef("x", "W"), "y" * 200)).endswith("y...)")
    assert kind_label(Parallel((ir.ReLU(), ir.Tanh()), ir.Combine("cat", 2))) == "Parallel(cat(dim=2))"
    assert kind_label(SkipConnection(ir.ReLU())) == "SkipConnection(add)"
    assert kind_label(ir.Conv2d(3, 16, 3, padding=1, bias=False)) == \
        "Conv2d(3, 16, kernel_size=3, padding=1, bias=False)"


def test_combinator_body_is_one_formula() -> None:
    body = Chain(SkipConnection(Chain(ChildRef("conv1"), ChildRef("bn1"))), ChildRef("relu"))
    block = Block(ClassRef("m", "B"), (("conv1", ir.Conv2d(4, 4, 3)), ("bn1", ir.BatchNorm2d(4)),
                                        ("relu", ir.ReLU())), body)
    assert format_node(block).splitlines()[1] == "  | forward: Chain(SkipConnection(add, Chain(conv1, bn1)), relu)"


def test_op_and_arg_text() -> None:
    x = Ref("x")
    cases = [
        (Op("y", GetAttr("weight")), "y = self.weight"),
        (Op("y", ChildCall("layer1.0"), (x,), (("scale", Const(2.0)),)), "y = layer1.0(x, scale=2.0)"),
        (Op("y", MethodCall("view"), (x, Const(-1), Const(8))), "y = x.view(-1, 8)"),
        (Op("y", FunctionCall("operator.add"), (x, Const(1))), "y = x + 1"),
        (Op("y", FunctionCall("operator.matmul"), (x, Ref("w"))), "y = x @ w"),
        (Op("y", FunctionCall("operator.getitem"), (x, Seq((Slice(Const(None), Const(None), Const(None)),
                                                            Const(0))))), "y = x[:, 0]"),
        (Op("y", FunctionCall("operator.getitem"), (x, Const(1))), "y = x[1]"),
        (Op("y", FunctionCall("operator.getitem"), (x, Seq((Const(Ellipsis), Slice(Const(1), Const(None),
                                                                                    Const(2)))))), "y = x[..., 1::2]"),
        (Op("y", FunctionCall("torch.nn.functional.dropout"), (x,), (("training", Training()),)),
         "y = F.dropout(x, training=self.training)"),
        (Op("y", FunctionCall("builtins.len"), (x,)), "y = len(x)"),
        (Op("y", FunctionCall("torch.cat"), (Seq((x, x), is_list=True),), (("dim", Const(1)),)),
         "y = torch.cat([x, x], dim=1)"),
        (Op("y", FunctionCall("builtins.tuple"), (Seq((x,)),)), "y = tuple((x,))"),
        (Op("y", PrimCall(Activation.of(ActKind.RELU, spelling=Spelling.FUNCTIONAL)), (x,)), "y = F.relu(x)"),
        (Op("y", PrimCall(Activation.of(ActKind.RELU, inplace=True, spelling=Spelling.FUNCTIONAL)), (x,)),
         "y = F.relu(x, inplace=True)"),
        (Op("y", PrimCall(Activation.of(ActKind.RELU, spelling=Spelling.TORCH)), (x,)), "y = torch.relu(x)"),
        (Op("y", PrimCall(Activation.of(ActKind.RELU, inplace=True, spelling=Spelling.TORCH)), (x,)),
         "y = torch.relu_(x)"),
        (Op("y", PrimCall(Activation.of(ActKind.RELU, spelling=Spelling.METHOD)), (x,)), "y = x.relu()"),
        (Op("y", PrimCall(Activation.of(ActKind.RELU, inplace=True, spelling=Spelling.METHOD)), (x,)),
         "y = x.relu_()"),
        (Op("y", PrimCall(Activation.of(ActKind.GELU, approximate="tanh")), (x,)),
         "y = F.gelu(x, approximate='tanh')"),
        (Op("y", PrimCall(ir.Dropout(0.1)), (x,)), "y = Dropout(0.1)(x)"),
    ]
    for op, text in cases:
        assert format_op(op) == text
    assert format_arg(Const(None)) == "None"
    assert format_arg(Seq(())) == "()"


def test_header_inputs_and_extras() -> None:
    inputs = (Input("x", TensorType(("N", 4), "int64")), Input("mask", default=Const(None)),
              Input("args", kind=InputKind.VAR_POSITIONAL), Input("kw", kind=InputKind.VAR_KEYWORD))
    m = Model("M", ir.ReLU(), inputs, ties=(("b.weight", "a.weight"),),
              helpers=(ir.Helper("fn", "def fn(x):\n    return x\n", "pkg.fn"),))
    assert format_model(m).splitlines() == [
        "model M(x: i64[N, 4], mask=None, *args, **kw)",
        "  ReLU",
        "  tie b.weight -> a.weight",
        "  helper fn (from pkg.fn)",
    ]


def test_format_node_without_types() -> None:
    chain = Chain(ir.Conv2d(3, 8, 3), ir.ReLU(), names=("conv", "act"))
    assert format_node(chain) == "Chain\n  conv  Conv2d(3, 8, kernel_size=3)\n  act   ReLU"
    assert format_node(chain, depth=0) == "Chain"
    assert format_node(ir.ReLU()) == "ReLU"


def test_dict_arguments_print_as_dicts() -> None:
    """A dict output reads ``{'logits': y}``, not the node's repr."""
    from torchgraft.ir.printer import format_arg
    from torchgraft.ir.values import Const, DictArg, Ref

    assert format_arg(DictArg((("logits", Ref("y")), ("n", Const(2))))) == "{'logits': y, 'n': 2}"

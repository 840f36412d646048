"""``verify``: valid models pass; each broken invariant fails with the path and a fix."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from torchgraft import ir
from torchgraft.errors import IRError
from torchgraft.ir import (
    Block,
    Chain,
    ChildCall,
    ChildRef,
    ClassRef,
    Const,
    Container,
    GetAttr,
    Graph,
    Input,
    Model,
    Op,
    Opaque,
    PrimCall,
    Ref,
    StateSpec,
    TensorType,
)
from torchgraft.ir.lower import map_leaves
from torchgraft.ir.traverse import replace_at
from torchgraft.ir.verify import implied_state, problems, verify

CLS = ClassRef("demo", "B")


def _with_ops(block: Block, ops: tuple[Op, ...], output: str) -> Block:
    assert isinstance(block.body, Graph)
    return replace(block, body=Graph(block.body.inputs, ops, Ref(output)))


def _block(children: tuple, ops: tuple[Op, ...], output: str, **kw: object) -> Block:
    return Block(CLS, children, Graph((Input("x"),), ops, Ref(output)), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- valid models

def test_captured_models_verify(net_ir: Model, resnet18_ir: Model, tied_ir: Model) -> None:
    for m in (net_ir, resnet18_ir, tied_ir):
        verify(m)
        assert problems(m) == []


def test_hand_built_model_verifies(tiny: Model) -> None:
    verify(tiny)
    keys = list(implied_state(tiny.root))
    assert keys == ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                    "bn.num_batches_tracked", "fc.weight", "fc.bias"]


def test_implied_state_matches_state_dict(net_ir: Model, resnet18_ir: Model) -> None:
    for m in (net_ir, resnet18_ir):
        implied = implied_state(m.root)
        assert list(implied) == list(m.weights)
        assert all(implied[k][0] == tuple(v.shape) for k, v in m.weights.items())


def test_get_attr_targets_that_exist(tiny: Model) -> None:
    root = tiny.root
    assert isinstance(root, Block) and isinstance(root.body, Graph)
    ops = root.body.ops + (Op("w", GetAttr("fc.weight")), Op("s", GetAttr("scale")), Op("k", GetAttr("k")),
                           Op("m", GetAttr("bn")), Op("o", GetAttr("op.inner.weight")), Op("o2", GetAttr("op.inner")))
    opaque = Opaque(ClassRef("x", "Weird"), "untraceable", (StateSpec("inner.weight", (2,)),))
    block = replace(_with_ops(root, ops, "fc"), children=root.children + (("op", opaque),),
                    state=(StateSpec("scale", (1,), persistent=False),), constants=(("k", Const(2)),))
    verify(replace(tiny, root=block))


# ------------------------------------------------------------------------------------------- state accounting

def test_dropped_weight(net_ir: Model) -> None:
    weights = {k: v for k, v in net_ir.weights.items() if k != "fc.bias"}
    with pytest.raises(IRError, match=r"missing from model.weights \(1\): fc.bias") as e:
        verify(replace(net_ir, weights=weights))
    assert "model Net failed verification (1 problem)" in str(e.value)


def test_unexpected_and_many_missing_weights(net_ir: Model) -> None:
    weights = {k: v for k, v in net_ir.weights.items() if not k.startswith("blocks.")}
    weights["extra.weight"] = torch.zeros(3)
    with pytest.raises(IRError) as e:
        verify(replace(net_ir, weights=weights))
    msg = str(e.value)
    assert "missing from model.weights (24): blocks.0.conv1.weight, blocks.0.bn1.weight" in msg
    assert ", ..." in msg
    assert "in model.weights but not in the IR (1): extra.weight" in msg


def test_wrong_weight_shape(net_ir: Model) -> None:
    weights = {**net_ir.weights, "fc.weight": torch.zeros(10, 32)}
    with pytest.raises(IRError, match=r"fc.weight: weight has shape \(10, 32\) but the IR implies \(10, 16\)"):
        verify(replace(net_ir, weights=weights))


def test_empty_weights_skip_state_accounting(net_ir: Model) -> None:
    verify(replace(net_ir, weights={}))


def test_state_spec_dtype_and_persistence() -> None:
    block = _block((), (Op("w", GetAttr("w")),), "w",
                   state=(StateSpec("w", (2,), "float16"), StateSpec("tmp", (3,), persistent=False)))
    m = Model("M", block, weights={"w": torch.zeros(2, dtype=torch.float16)})
    verify(m)
    with pytest.raises(IRError, match="w: weight has dtype torch.float32 but the IR records float16"):
        verify(replace(m, weights={"w": torch.zeros(2)}))
    with pytest.raises(IRError, match="not in the IR .1.: tmp"):
        verify(replace(m, weights={"w": torch.zeros(2, dtype=torch.float16), "tmp": torch.zeros(3)}))


def test_opaque_state_is_counted() -> None:
    opaque = Opaque(ClassRef("x", "Weird"), "untraceable", (StateSpec("inner.weight", (2, 2)),))
    m = Model("M", Chain(ir.ReLU(), opaque), weights={"1.inner.weight": torch.zeros(2, 2)})
    verify(m)
    with pytest.raises(IRError, match="missing from model.weights .1.: 1.inner.weight"):
        verify(replace(m, weights={"other": torch.zeros(1)}))


# ------------------------------------------------------------------------------------------- calls and attributes

def test_child_call_to_missing_child(net_ir: Model) -> None:
    root = net_ir.root
    assert isinstance(root, Block) and isinstance(root.body, Graph)
    ops = tuple(replace(op, target=ChildCall("head")) if op.name == "fc" else op for op in root.body.ops)
    broken = replace(net_ir, root=_with_ops(root, ops, "fc"))
    with pytest.raises(IRError) as e:
        verify(broken)
    msg = str(e.value)
    assert "<root>: Block<Net> calls child 'head', which does not exist" in msg
    assert "['stem', 'blocks', 'pool', 'fc']" in msg and "fix the call's path" in msg


def test_child_call_through_chain_and_nested_names(net_ir: Model) -> None:
    root = net_ir.root
    assert isinstance(root, Block) and isinstance(root.body, Graph)
    ops = root.body.ops + (Op("deep", ChildCall("blocks.1.conv2"), (Ref("x"),)),
                           Op("bad", ChildCall("blocks.7.conv2"), (Ref("x"),)))
    with pytest.raises(IRError, match="calls child 'blocks.7.conv2'") as e:
        verify(replace(net_ir, root=_with_ops(root, ops, "fc")))
    assert "blocks.1.conv2" not in str(e.value).replace("blocks.7.conv2", "")


def test_child_call_in_nested_block(resnet18_ir: Model) -> None:
    block = next(n for p, n in ir.walk(resnet18_ir.root) if p == "layer2.0")
    assert isinstance(block, Block) and isinstance(block.body, Chain)  # stored as structure at capture
    body = map_leaves(block.body, lambda _, n: ChildRef("downsample.5") if n == ChildRef("downsample") else n)
    broken = replace_at(resnet18_ir, "layer2.0", replace(block, body=body))
    with pytest.raises(IRError, match="layer2.0: Block<BasicBlock> calls child 'downsample.5'"):
        verify(broken)


def test_child_ref_in_combinator_body() -> None:
    body = Chain(ChildRef("conv"), ChildRef("act"))
    block = Block(CLS, (("conv", ir.Conv2d(3, 3, 1)),), body)
    with pytest.raises(IRError, match="calls child 'act', which does not exist"):
        verify(Model("M", block))
    verify(Model("M", replace(block, children=block.children + (("act", ir.ReLU()),))))


def test_train_body_is_checked_too() -> None:
    block = Block(CLS, (("a", ir.ReLU()),), ChildRef("a"), train_body=ChildRef("b"))
    with pytest.raises(IRError, match="calls child 'b'"):
        verify(Model("M", block))


def test_child_call_to_container() -> None:
    lst = Container("ModuleList", (("0", ir.ReLU()),))
    block = _block((("layers", lst),), (Op("y", ChildCall("layers"), (Ref("x"),)),), "y")
    with pytest.raises(IRError, match="calls 'layers', a ModuleList, which has no forward"):
        verify(Model("M", block))
    verify(Model("M", _block((("layers", lst),), (Op("y", ChildCall("layers.0"), (Ref("x"),)),), "y")))


@pytest.mark.parametrize("path", ["nope", "fc.nope", "bn.weight.x", "conv.bias", "fc.weight.T"])
def test_get_attr_to_missing_member(tiny: Model, path: str) -> None:
    root = tiny.root
    assert isinstance(root, Block) and isinstance(root.body, Graph)
    broken = replace(tiny, root=_with_ops(root, root.body.ops + (Op("w", GetAttr(path)),), "fc"))
    with pytest.raises(IRError, match=f"reads self.{path}, which is neither a child"):
        verify(broken)


def test_prim_call_of_stateful_primitive() -> None:
    block = _block((), (Op("y", PrimCall(ir.LinearLayer(4, 4)), (Ref("x"),)),), "y")
    with pytest.raises(IRError, match=r"calls Linear\(4, 4\) functionally, but it has state \['weight', 'bias'\]"):
        verify(Model("M", block))
    verify(Model("M", _block((), (Op("y", PrimCall(ir.ReLU()), (Ref("x"),)),), "y")))


def test_inline_stateful_primitive_in_body() -> None:
    block = Block(CLS, (("a", ir.ReLU()),), Chain(ChildRef("a"), ir.BatchNorm2d(4)))
    with pytest.raises(IRError, match=r"uses BatchNorm2d\(4\) inline, but it has state"):
        verify(Model("M", block))


# ------------------------------------------------------------------------------------------- names and ties

def test_module_dict_duplicate_keys() -> None:
    d = Container("ModuleDict", (("a", ir.ReLU()), ("a", ir.Tanh())))
    with pytest.raises(IRError, match=r"<root>: member names \['a'\] are used more than once"):
        verify(Model("M", d))


def test_dotted_and_empty_names() -> None:
    d = Container("ModuleDict", (("a.b", ir.ReLU()), ("", ir.Tanh())))
    with pytest.raises(IRError, match=r"member names \['a.b', ''\] are empty or contain '.'"):
        verify(Model("M", d))


def test_block_constant_clashing_with_child() -> None:
    block = Block(CLS, (("a", ir.ReLU()),), ChildRef("a"), constants=(("a", Const(1)),))
    with pytest.raises(IRError, match=r"member names \['a'\] are used more than once"):
        verify(Model("M", block))


def test_ties(tied_ir: Model) -> None:
    assert ("head.weight", "emb.weight") in tied_ir.ties
    with pytest.raises(IRError, match="tie 'ghost' -> 'shared': alias 'ghost' is neither a module path nor"):
        verify(replace(tied_ir, ties=tied_ir.ties + (("ghost", "shared"),)))
    with pytest.raises(IRError, match="target 'emb.bias' is neither"):
        verify(replace(tied_ir, ties=(("head.weight", "emb.bias"),)))


# ------------------------------------------------------------------------------------------- chain composition

def test_wrong_in_channels_in_chain(net_ir: Model) -> None:
    broken = replace_at(net_ir, "stem.1", ir.BatchNorm2d(32))
    with pytest.raises(IRError) as e:
        verify(replace(broken, weights={}))
    msg = str(e.value)
    assert "stem.1: BatchNorm2d(32) has num_features=32 but the previous item 'stem.0' outputs " \
           "f32[N, 16, 32, 32] (dim 1); make them agree" in msg
    with pytest.raises(IRError, match="stem.1.weight: weight has shape"):
        verify(broken)


def test_chain_composition_conv_and_linear() -> None:
    chain = Chain(ir.Conv2d(3, 8, 3), ir.Conv2d(4, 8, 3), ir.Flatten(), ir.LinearLayer(100, 10), ir.ReLU(),
                  ir.LinearLayer(10, 2))
    types = (("0", TensorType(("N", 8, 30, 30))), ("1", TensorType(("N", 8, 28, 28))),
             ("2", TensorType(("N", 6272))), ("3", TensorType(("N", 10))), ("4", TensorType(("N", 10))))
    found = problems(Model("M", chain, types=types))
    assert len(found) == 2
    assert found[0].startswith("1: Conv2d(4, 8, kernel_size=3) has in_channels=4 but the previous item '0' outputs")
    assert found[1].startswith("3: Linear(100, 10) has in_features=100 but the previous item '2' outputs f32[N, 6272]")


def test_chain_composition_skips_unknown_and_symbolic_dims() -> None:
    chain = Chain(ir.Conv2d(3, 8, 3), ir.BatchNorm2d(4), ir.LinearLayer(5, 2),
                  ir.LayerNormOp("LayerNorm", (3, 2)), ir.GroupNorm("GroupNorm", 2, 6))
    types = (("1", TensorType(("N", "C", 5))), ("2", TensorType(("N", 3, 2))),
             ("3", ir.ScalarType("tuple")))
    verify(Model("M", chain, types=types))
    bad = (("1", TensorType(("N", 8, 5))), ("2", TensorType(("N", 4, 2))), ("3", TensorType(("N", 4, 6))))
    found = problems(Model("M", chain, types=bad))
    assert [p.split(":")[0] for p in found] == ["3", "4"]
    assert "normalized_shape=(3, 2)" in found[0] and "num_channels=6" in found[1]


def test_all_problems_are_listed_together(net_ir: Model) -> None:
    weights = {k: v for k, v in net_ir.weights.items() if k != "fc.bias"}
    broken = replace(replace_at(net_ir, "stem.1", ir.BatchNorm2d(32)), weights=weights,
                     ties=(("nowhere", "fc"),))
    with pytest.raises(IRError) as e:
        verify(broken)
    msg = str(e.value)
    assert msg.startswith("model Net failed verification (")
    assert all(s in msg for s in ("num_features=32", "fc.bias", "tie 'nowhere'", "stem.1.weight"))


def test_verify_needs_a_model() -> None:
    with pytest.raises(IRError, match="needs an ir.Model"):
        verify(ir.ReLU())  # type: ignore[arg-type]

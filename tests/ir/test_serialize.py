"""JSON + safetensors form of the IR: exact round trips, determinism, strict decoding."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
    Const,
    Container,
    Conv,
    FunctionCall,
    GetAttr,
    Graph,
    Helper,
    Input,
    InputKind,
    MethodCall,
    Model,
    Op,
    Opaque,
    Parallel,
    PrimCall,
    Ref,
    ScalarType,
    Seq,
    SkipConnection,
    Slice,
    Spelling,
    StateSpec,
    TensorType,
    TorchLayer,
    Training,
)
from torchgraft.ir.serialize import from_json, load, save, to_json
from torchgraft.ir.verify import verify

CONSTS = (None, True, False, 0, 1, -7, 2**70, 1.0, -0.0, 1e-300, 1.5e300, math.inf, -math.inf, math.nan, "", "s",
          "ünï\"cödé\n", Ellipsis, 1 + 2j, complex(math.inf, -1.0), torch.float16, torch.bfloat16, torch.int64,
          torch.bool, torch.device("cpu"), torch.device("cuda", 1), torch.channels_last, torch.contiguous_format,
          torch.strided, torch.sparse_coo)


def _every_primitive() -> tuple[ir.Primitive, ...]:
    return (
        ir.Conv2d(3, 16, 3, padding=1, bias=False),
        ir.Conv1d(4, 8, 5, padding="same", groups=2),
        Conv("ConvTranspose2d", 8, 4, (2, 2), (2, 2), 0, (1, 1), 1, 1, True, "zeros"),
        ir.LinearLayer(16, 10),
        ir.BatchNorm("BatchNorm1d", 8, 1e-3, None, False, False),
        ir.LayerNormOp("LayerNorm", (4, 8), 1e-6, True, False),
        ir.GroupNorm("GroupNorm", 2, 8),
        Activation.of(ActKind.LEAKY_RELU, negative_slope=0.2, inplace=True),
        Activation.of(ActKind.GELU, approximate="tanh", spelling=Spelling.FUNCTIONAL),
        Activation.of(ActKind.HARDTANH, min_val=-2.0, max_val=2.0, spelling=Spelling.TORCH),
        Activation.of(ActKind.SIGMOID, spelling=Spelling.METHOD),
        ir.Dropout(0.25, inplace=True),
        ir.Identity(),
        TorchLayer("MaxPool2d", (("kernel_size", (3, 3)), ("stride", None), ("padding", 1), ("ceil_mode", True))),
        TorchLayer("Upsample", (("size", None), ("scale_factor", 2.0), ("mode", "nearest"),
                                ("align_corners", None))),
        TorchLayer("Unflatten", (("dim", 1), ("unflattened_size", [4, 4]))),
        TorchLayer("Softmax", (("dim", -1),)),
    )


def _big_graph() -> Graph:
    """Every op target and argument kind."""
    x = TensorType(("N", 4, 8))
    inputs = (Input("x", x), Input("mask", ScalarType("None"), InputKind.KEYWORD, Const(None)),
              Input("args", kind=InputKind.VAR_POSITIONAL), Input("kwargs", kind=InputKind.VAR_KEYWORD),
              Input("scale", ScalarType("float"), default=Const(1.0)))
    consts = tuple(Const(c) for c in CONSTS)
    ops = (
        Op("w", GetAttr("weight"), type=TensorType((4,))),
        Op("lin", ChildCall("blocks.0.fc"), (Ref("x"),), type=x),
        Op("act", PrimCall(Activation.of(ActKind.SILU, spelling=Spelling.FUNCTIONAL)), (Ref("lin"),)),
        Op("v", MethodCall("view"), (Ref("act"), Const(-1), Const(8)), (), TensorType(("N", 32))),
        Op("sl", FunctionCall("operator.getitem"),
           (Ref("x"), Seq((Slice(Const(None), Const(None), Const(None)), Slice(Const(1), Ref("scale"), Const(2)),
                           Const(Ellipsis))))),
        Op("cat", FunctionCall("torch.cat"), (Seq((Ref("x"), Ref("x")), is_list=True),), (("dim", Const(1)),),
           source_var="doubled"),
        Op("drop", FunctionCall("torch.nn.functional.dropout"), (Ref("cat"),),
           (("p", Const(0.1)), ("training", Training()))),
        Op("consts", FunctionCall("builtins.tuple"), (Seq(consts),),
           type=ScalarType("tuple", (TensorType(("N", 2)), ScalarType("list", (ScalarType("int"),))))),
        Op("h", FunctionCall("helpers.my_fn"), (Ref("drop"),)),
        Op("danger", FunctionCall("os.system"), (Const("echo pwned"),)),
    )
    return Graph(inputs, ops, Seq((Ref("h"), Ref("v"), Seq((), is_list=True))))


def kitchen_sink() -> Model:
    """A hand-built model holding every node class, enum, argument kind and constant type."""
    prims = _every_primitive()
    inner = Block(ClassRef("demo.mod", "Inner.Nested"), (("fc", ir.LinearLayer(8, 8)),),
                  Graph((Input("x"),), (Op("fc", ChildCall("fc"), (Ref("x"),)),), Ref("fc")))
    blocks = Chain(inner, inner, names=("0", "1"))
    combinator = Block(ClassRef("demo", "Combi"), (("a", ir.ReLU()), ("b", ir.Tanh()), ("c", ir.Conv2d(3, 3, 1))),
                       SkipConnection(Chain(ChildRef("a"), Parallel((ChildRef("b"), ChildRef("c")),
                                                                    Combine("cat", dim=-1))), Combine("mul")),
                       train_body=ChildRef("a"), method="structure")
    opaque = Opaque(ClassRef("thirdparty", "Weird"), "torch.fx could not trace: data-dependent control flow",
                    (StateSpec("inner.weight", (3, 3)), StateSpec("count", (), "int64", False)),
                    (("size", Const(3)), ("mode", Const("fast")), ("eps", Const(math.inf))))
    children = (
        ("prims", Chain(*prims, names=tuple(f"p{i}" for i in range(len(prims))))),
        ("blocks", blocks),
        ("par", Parallel((ir.ReLU(), ir.Identity(), ir.Tanh()), Combine("add"), ("r", "i", "t"))),
        ("skip", SkipConnection(ir.Conv2d(4, 4, 1))),
        ("combi", combinator),
        ("lst", Container("ModuleList", (("0", ir.ReLU()), ("1", opaque)))),
        ("dct", Container("ModuleDict", (("z", ir.ReLU()), ("a", Chain())))),
    )
    state = (StateSpec("weight", (4,)), StateSpec("running", (2, 3), "float16", False, True, False),
             StateSpec("cache", (1,), "int32", False, False, False))
    root = Block(ClassRef("demo", "Everything"), children, _big_graph(), state, train_body=_big_graph(),
                 method="fx", constants=(("alpha", Const(0.5)), ("name", Const("x")), ("flag", Const(True))))
    return Model("Everything", root, _big_graph().inputs, ScalarType("tuple", (TensorType(("N", 4, 8)),)),
                 (("", UNK_TUPLE), ("blocks", TensorType(("N", 8), "bfloat16", "cuda:0"))),
                 (("blocks.1", "blocks.0"), ("par.t.weight", "par.r.weight")),
                 (Helper("my_fn", "def my_fn(x):\n    return x * 2\n", "demo.my_fn"),))


UNK_TUPLE = ScalarType("tuple", (ir.UNKNOWN, ScalarType("None")))


# ------------------------------------------------------------------------------------------- round trips

def _strict_loads(text: str) -> Any:
    def bad(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=bad)


def test_kitchen_sink_round_trips_exactly() -> None:
    m = kitchen_sink()
    text = to_json(m)
    back = from_json(text)
    assert back == m
    assert to_json(back) == text
    assert to_json(kitchen_sink()) == text  # deterministic
    _strict_loads(text)


def test_source_var_is_kept_and_written_only_when_set() -> None:
    """``Op.source_var`` (a naming hint from the original source) survives JSON; empty, it is not written."""
    doc = json.loads(to_json(kitchen_sink()))
    ops = [o for o in _nodes(doc) if o.get("node") == "Op"]
    assert [o["source_var"] for o in ops if "source_var" in o] == ["doubled", "doubled"]  # body and train_body
    back = from_json(to_json(kitchen_sink())).root.body
    assert [op.source_var for op in back.ops if op.name == "cat"] == ["doubled"]  # type: ignore[union-attr]
    with pytest.raises(IRError, match="source_var"):
        Op("v", FunctionCall("torch.relu"), (Ref("x"),), source_var="not a name")
    bad = to_json(kitchen_sink()).replace('"source_var": "doubled"', '"source_var": "import os"')
    with pytest.raises(IRError, match="source_var"):
        from_json(bad)


def _nodes(doc: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            out.append(v)
            stack += list(v.values())
        elif isinstance(v, list):
            stack += v
    return out


def test_node_tags_and_value_tags_are_readable() -> None:
    doc = _strict_loads(to_json(kitchen_sink()))
    assert doc["format"] == "torchgraft-ir" and doc["version"] == 1
    root = doc["model"]["root"]
    assert root["node"] == "Block"
    assert root["children"][0][1]["node"] == "Chain"
    assert root["children"][0][1]["items"][0]["node"] == "Conv"
    assert root["children"][0][1]["items"][7]["kind"] == {"enum": "ActKind", "member": "LEAKY_RELU"}


@pytest.mark.parametrize("value", CONSTS, ids=repr)
def test_every_const_keeps_its_type(value: object) -> None:
    m = Model("M", Block(ClassRef("m", "M"), (), Graph((Input("x"),), (), Seq((Ref("x"), Const(value))))))
    back = from_json(to_json(m))
    assert back == m
    got = back.root.body.output.items[1].value  # type: ignore[union-attr]
    assert type(got) is type(value)
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(got)  # type: ignore[arg-type]
    else:
        assert got == value


def test_tuple_list_int_float_bool_stay_apart() -> None:
    layer = TorchLayer("Unflatten", (("dim", 1), ("unflattened_size", (4, 4))))
    listed = TorchLayer("Unflatten", (("dim", 1), ("unflattened_size", [4, 4])))
    for prim in (layer, listed, TorchLayer("Softmax", (("dim", 1.0),)), TorchLayer("Softmax", (("dim", True),))):
        back = from_json(to_json(Model("M", prim))).root
        assert back == prim
        assert [type(v) for _, v in back.args] == [type(v) for _, v in prim.args]  # type: ignore[union-attr]
    assert type(from_json(to_json(Model("M", listed))).root.args[1][1]) is list  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.lists(inner, max_size=3),
                    max_leaves=8),
       st.lists(st.integers(0, 10**6) | st.sampled_from(["N", "S", "batch"]), max_size=5))
def test_property_values_and_shapes_round_trip(value: object, shape: list) -> None:
    prim = TorchLayer("Identity", (("v", value),))
    m = Model("M", prim, output_type=TensorType(tuple(shape)))
    text = to_json(m)
    back = from_json(text)
    assert to_json(back) == text
    assert back.output_type == m.output_type
    assert repr(back.root) == repr(prim)  # repr, since nan != nan inside plain tuples


def test_captured_net_round_trips(net_ir: Model) -> None:
    text = to_json(net_ir)
    assert from_json(text) == net_ir
    assert to_json(net_ir) == text
    _strict_loads(text)


def test_captured_resnet18_round_trips(resnet18_ir: Model) -> None:
    text = to_json(resnet18_ir)
    back = from_json(text)
    assert back == resnet18_ir
    assert to_json(back) == text
    verify(replace(back, weights=resnet18_ir.weights))


# ------------------------------------------------------------------------------------------- files

def _assert_same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_save_load_preserves_weights(tmp_path: Path, net_ir: Model) -> None:
    save(net_ir, tmp_path / "net")
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["model.json", "weights.safetensors"]
    back = load(tmp_path / "net")
    assert back == net_ir
    _assert_same_tensors(back.weights, dict(net_ir.weights))
    verify(back)


def test_save_load_resnet18(tmp_path: Path, resnet18_ir: Model) -> None:
    back = load(save(resnet18_ir, tmp_path))
    assert back == resnet18_ir
    _assert_same_tensors(back.weights, dict(resnet18_ir.weights))
    assert "bn1.num_batches_tracked" in back.weights


def test_save_load_tied_weights_and_constants(tmp_path: Path, tied_ir: Model) -> None:
    w = tied_ir.weights
    assert w["head.weight"].untyped_storage().data_ptr() == w["emb.weight"].untyped_storage().data_ptr()
    save(tied_ir, tmp_path)
    assert (tmp_path / "constants.safetensors").is_file()
    back = load(tmp_path)
    assert back == tied_ir and back.ties == tied_ir.ties
    _assert_same_tensors(back.weights, dict(w))
    _assert_same_tensors(back.constants, dict(tied_ir.constants))
    verify(back)


def test_save_handles_views_and_non_contiguous(tmp_path: Path) -> None:
    base = torch.arange(24.0).reshape(4, 6)
    weights = {"a": base, "b": base[1], "c": base.t(), "d": base[:, 1:3], "e": torch.zeros(0),
               "f": torch.zeros(0, 3), "g": torch.tensor(7, dtype=torch.int64)}
    m = Model("M", ir.Identity(), weights=weights)
    back = load(save(m, tmp_path))
    _assert_same_tensors(back.weights, weights)


def test_load_without_model_file(tmp_path: Path) -> None:
    with pytest.raises(IRError, match="has no model.json"):
        load(tmp_path)


# ------------------------------------------------------------------------------------------- strict decoding

def _doc(model_obj: object) -> str:
    return json.dumps({"format": "torchgraft-ir", "version": 1, "model": model_obj})


@pytest.mark.parametrize("text, match", [
    (_doc({"node": "Evil", "x": 1}), "unknown node tag 'Evil'"),
    (_doc({"node": "__import__"}), "unknown node tag '__import__'"),
    (_doc({"node": "Model", "name": "M", "root": {"node": "Nope"}}), "unknown node tag 'Nope'"),
    (_doc({"node": "Model", "name": "M", "root": {"node": "Identity", "op": "Identity", "evil": 1}}),
     r"unknown fields \['evil'\]"),
    (_doc({"node": "Model", "name": "M", "root": {"node": "Activation", "kind": {"enum": "ActKind",
                                                                                  "member": "RELU2"}}}),
     "ActKind has no member 'RELU2'"),
    (_doc({"node": "Model", "name": "M", "root": {"enum": "os", "member": "system"}}), "unknown enum tag 'os'"),
    (_doc({"node": "Model", "name": "M", "root": {"py": "pickle", "data": "..."}}), "without a known tag"),
    (_doc({"node": "Model", "name": "M", "root": {"what": 1}}), "without a known tag"),
    (_doc({"node": "Model", "name": "M", "root": {"node": "Conv", "op": "Conv2d", "in_channels": 3,
                                                  "out_channels": 4, "groups": 2}}), "invalid Conv in JSON"),
    (_doc({"node": "Model", "name": "M", "root": {"node": "Identity", "op": "Identity",
                                                  "x": {"py": "dtype", "name": "torch.evil"}}}),
     "unknown fields"),
    (_doc({"node": "Identity", "op": "Identity"}), "not a Model"),
    (json.dumps({"format": "torchgraft-ir", "version": 99, "model": {}}), "version 99 is not supported"),
    (json.dumps({"model": {}}), "not a torchgraft IR document"),
    ("{not json", "does not parse"),
])
def test_bad_documents_raise_ir_error(text: str, match: str) -> None:
    with pytest.raises(IRError, match=match):
        from_json(text)


def test_unknown_torch_names_are_rejected() -> None:
    base = {"node": "Model", "name": "M", "root": {"node": "ChildRef", "path": "a"},
            "types": [["", {"node": "ScalarType", "name": "x", "items": []}]]}
    assert from_json(_doc(base)).root == ChildRef("a")
    for bad, match in (({"py": "dtype", "name": "torch.evil"}, "unknown torch dtype"),
                       ({"py": "layout", "name": "os.system"}, "unknown torch layout"),
                       ({"py": "device", "name": "warp:9"}, "bad device"),
                       ({"py": "float", "repr": "__import__('os')"}, "bad JSON float")):
        doc = {**base, "root": {"node": "Opaque", "cls": {"node": "ClassRef", "module": "m", "qualname": "q"},
                                "reason": "r", "ctor": [["a", {"node": "Const", "value": bad}]]}}
        with pytest.raises(IRError, match=match):
            from_json(_doc(doc))


def test_function_names_stay_data() -> None:
    m = kitchen_sink()
    before = set(sys.modules)
    back = from_json(to_json(m))
    assert set(sys.modules) == before  # decoding imports nothing
    assert isinstance(back.root, Block) and isinstance(back.root.body, Graph)
    ops = {op.name: op for op in back.root.body.ops}
    assert ops["danger"].target == FunctionCall("os.system")


def test_unsupported_values_fail_to_encode() -> None:
    class Custom(ir.Identity):
        pass

    with pytest.raises(IRError, match="cannot serialise"):
        to_json(Model("M", TorchLayer("Identity", (("x", object()),))))
    with pytest.raises(IRError, match="not one of the IR classes"):
        to_json(Model("M", Custom()))
    with pytest.raises(IRError, match="needs an ir.Model"):
        to_json(ir.ReLU())  # type: ignore[arg-type]

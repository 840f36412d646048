"""Hand-built IR is typed by retype's code (modules built from the IR on meta, the IR replayed at trial
sizes): several symbols through Chain/Parallel/SkipConnection, derived dims (``N*8``, ``N*4``), tuple and
dict outputs, op types inside Blocks; no code is emitted or imported; errors name the innermost node."""

from __future__ import annotations

import pytest
import torch

import torchgraft as tg
import torchgraft.backends.torch.emitter as emitter
from torchgraft import hand, ir
from torchgraft.hand import build_model, infer_types
from torchgraft.ir.values import DictArg
from torchgraft.ir.verify import verify
from torchgraft.retype import retype

T = ir.TensorType
EMBEDDING = ir.TorchLayer("Embedding", (("num_embeddings", 50), ("embedding_dim", 16)))


def _types(model: ir.Model) -> dict[str, str]:
    return {p: str(t) for p, t in model.types}


def _net() -> ir.Chain:
    """Embedding → Parallel(Linear, SkipConnection(Linear + ReLU)) joined by cat → Linear: over (N, T)."""
    skip = ir.SkipConnection(ir.Chain(ir.LinearLayer(16, 16), ir.ReLU()))
    return ir.Chain(EMBEDDING, ir.Parallel((ir.LinearLayer(16, 8), skip), ir.Combine("cat", -1)),
                    ir.LinearLayer(24, 4))


def _bare(root: ir.Node, *inputs: ir.TensorType) -> ir.Model:
    return ir.Model("Model", root, tuple(ir.Input(f"x{i}" if i else "x", t) for i, t in enumerate(inputs)))


@pytest.fixture
def no_emit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typing must not emit code nor import a generated module."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("code was emitted while typing")

    monkeypatch.setattr(emitter, "emit", refuse)
    monkeypatch.setattr(hand, "emit", refuse)  # build_model's own reference: weights only, never types
    monkeypatch.setattr(emitter, "import_file", refuse)


def test_two_symbols_through_chain_parallel_skip(no_emit: None) -> None:
    model = infer_types(_net(), (T(("N", "T"), "int64"),))
    assert _types(model) == {
        "": "f32[N, T, 4]", "0": "f32[N, T, 16]", "1": "f32[N, T, 24]", "1.0": "f32[N, T, 8]",
        "1.1": "f32[N, T, 16]", "1.1.body": "f32[N, T, 16]", "1.1.body.0": "f32[N, T, 16]",
        "1.1.body.1": "f32[N, T, 16]", "2": "f32[N, T, 4]"}
    assert model.output_type == T(("N", "T", 4))


def test_same_types_as_retype_of_the_bare_model(no_emit: None) -> None:
    bare = _bare(_net(), T(("N", "T"), "int64"))
    typed = infer_types(bare.root, tuple(i.type for i in bare.inputs))  # type: ignore[misc]
    again = retype(bare)
    assert typed == again and typed.types == again.types and typed.output_type == again.output_type


def test_derived_dims_are_written_symbolically(no_emit: None) -> None:
    flat = infer_types(ir.Chain(ir.ReLU(), ir.Flatten()), (T(("N", 4, 2)),))
    assert str(flat.output_type) == "f32[N, 8]" and _types(flat)["0"] == "f32[N, 4, 2]"
    graph = ir.Graph((ir.Input("x", T(("N", 4))),),
                     (ir.Op("h", ir.ChildCall("lin"), (ir.Ref("x"),)),
                      ir.Op("y", ir.MethodCall("reshape"), (ir.Ref("h"), ir.Const(-1)))),
                     ir.Ref("y"))
    block = ir.Block(ir.ClassRef("mynet", "Flat"), (("lin", ir.LinearLayer(4, 4)),), graph)
    model = infer_types(block, (T(("N", 4)),), name="Flat")
    assert str(model.output_type) == "f32[N*4]" and _types(model) == {"": "f32[N*4]", "lin": "f32[N, 4]"}
    assert isinstance(model.root, ir.Block) and isinstance(model.root.body, ir.Graph)
    assert [str(op.type) for op in model.root.body.ops] == ["f32[N, 4]", "f32[N*4]"]  # op types, as retype fills them
    verify(model)


def _heads(output: ir.Seq | DictArg) -> ir.Block:
    graph = ir.Graph((ir.Input("x", T(("N", "T", 8))),),
                     (ir.Op("a", ir.ChildCall("l1"), (ir.Ref("x"),)),
                      ir.Op("f", ir.FunctionCall("torch.flatten"), (ir.Ref("x"),), (("start_dim", ir.Const(1)),)),
                      ir.Op("b", ir.ChildCall("l2"), (ir.Ref("x"),))),
                     output)
    return ir.Block(ir.ClassRef("mynet", "Heads"), (("l1", ir.LinearLayer(8, 10)), ("l2", ir.LinearLayer(8, 3))),
                    graph)


def test_tuple_and_dict_outputs_with_two_symbols(no_emit: None) -> None:
    pair = infer_types(_heads(ir.Seq((ir.Ref("a"), ir.Ref("f")))), (T(("N", "T", 8)),), name="Heads")
    assert pair.output_type == ir.ScalarType("tuple", (T(("N", "T", 10)), T(("N", "T*8"))))
    named = infer_types(_heads(DictArg((("logits", ir.Ref("a")), ("aux", ir.Ref("b"))))), (T(("N", "T", 8)),))
    assert str(named.output_type) == "dict[f32[N, T, 10], f32[N, T, 3]]"
    assert str(named.type_at("l2")) == "f32[N, T, 3]" and "meta" not in repr(named.types)


def test_build_model_types_without_emitting_for_them_and_runs_at_two_sizes() -> None:
    model = build_model(_net(), T(("N", "T"), "int64"), seed=2)
    verify(model)
    assert sorted(model.weights) == ["0.weight", "1.0.bias", "1.0.weight", "1.1.body.0.bias", "1.1.body.0.weight",
                                     "2.bias", "2.weight"]
    mod = tg.emit(model).materialize().eval()
    w = model.weights
    for n, t in ((2, 3), (5, 7)):
        x = torch.randint(0, 50, (n, t), generator=torch.Generator().manual_seed(n))
        e = torch.nn.functional.embedding(x, w["0.weight"])
        a = torch.nn.functional.linear(e, w["1.0.weight"], w["1.0.bias"])
        b = e + torch.relu(torch.nn.functional.linear(e, w["1.1.body.0.weight"], w["1.1.body.0.bias"]))
        want = torch.nn.functional.linear(torch.cat((a, b), -1), w["2.weight"], w["2.bias"])
        with torch.no_grad():
            torch.testing.assert_close(mod(x), want, rtol=1e-5, atol=1e-5)
        assert mod(x).shape == (n, t, 4)


def test_error_in_a_skip_body_names_the_innermost_node(no_emit: None) -> None:
    skip = ir.SkipConnection(ir.Chain(ir.LinearLayer(16, 16), ir.LinearLayer(12, 16)))
    with pytest.raises(tg.IRError) as info:
        infer_types(ir.Chain(EMBEDDING, skip), (T(("N", "T"), "int64"),))
    msg = str(info.value)
    assert "the hand-built model fails at '1.body.1' (Linear) on input f32[N, T, 16]" in msg
    assert "(N*Tx16 and 12x16)" in msg and "fix the arguments of that node" in msg
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_failing_join_and_a_failing_op_are_named(no_emit: None) -> None:
    net = ir.Parallel((ir.Conv2d(3, 4, 1), ir.Conv2d(3, 6, 3, stride=2, padding=1)), ir.Combine("cat", 1))
    with pytest.raises(tg.IRError, match=r"fails at <root> \(combine cat\(dim=1\)\) on input "
                                         r"f32\[N, 4, 16, 16\], f32\[N, 6, 8, 8\]: RuntimeError: Sizes"):
        infer_types(net, (T(("N", 3, 16, 16)),))
    graph = ir.Graph((ir.Input("x", T(("N", 8))),),
                     (ir.Op("y", ir.MethodCall("view"), (ir.Ref("x"), ir.Const(-1), ir.Const(7))),), ir.Ref("y"))
    with pytest.raises(tg.IRError, match=r"fails at <root> \(V, op 'y'\) on input f32\[N, 8\], int, int: "
                                         r"RuntimeError: shape '\[-1, 7\]' is invalid"):
        infer_types(ir.Block(ir.ClassRef("m", "V"), (), graph), (T(("N", 8)),))


def test_a_model_that_needs_code_is_refused_not_emitted(no_emit: None) -> None:
    source = "def forward(self, x):\n    return x\n"
    block = ir.Block(ir.ClassRef("m", "Src"), (), ir.PySource(source))
    with pytest.raises(tg.IRError, match=r"cannot be typed from its IR: Block at <root>: its forward is PySource"):
        infer_types(block, (T(("N", 8)),))


def test_inputs_are_checked() -> None:
    with pytest.raises(tg.IRError, match="at least one input type"):
        infer_types(ir.Chain(ir.ReLU()), ())
    with pytest.raises(tg.IRError, match="derived dims"):
        infer_types(ir.Chain(ir.ReLU()), (T(("N*2", 3)),))

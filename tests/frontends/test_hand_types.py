"""Hand-built models are typed symbolically: derived dims (``N*4``), several symbols, tuple and dict
outputs on the real device, errors that name the failing node; ``tg.build`` seeds without touching
the global RNG, and the emitted model matches a plain-torch reference at two batch sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import torchgraft as tg
from torchgraft import ir
from torchgraft.frontends.hand_dims import TrialPlan
from torchgraft.hand import build_model
from torchgraft.ir.values import DictArg
from torchgraft.ir.verify import verify

T = ir.TensorType
EMBEDDING = ir.TorchLayer("Embedding", (("num_embeddings", 100), ("embedding_dim", 32)))


def _types(model: ir.Model) -> dict[str, str]:
    return {p: str(t) for p, t in model.types}


def test_derived_dim_is_an_expression() -> None:
    model = tg.build(ir.Chain(ir.LinearLayer(4, 4), ir.Flatten(0, -1)), T(("N", 4)))
    assert _types(model) == {"": "f32[N*4]", "0": "f32[N, 4]", "1": "f32[N*4]"}
    assert str(model.output_type) == "f32[N*4]"
    verify(model)
    emitted = tg.emit(model).materialize()
    for n in (2, 3):
        assert emitted(torch.randn(n, 4)).shape == (4 * n,)


def test_offsets_and_symbolic_spatial_dims() -> None:
    net = ir.Chain(ir.Conv2d(3, 8, 3, padding=1), ir.Conv2d(8, 8, 3))
    model = tg.build(net, T(("N", 3, "H", "W")))
    assert str(model.type_at("0")) == "f32[N, 8, H, W]"
    assert str(model.output_type) == "f32[N, 8, H-2, W-2]"


def test_stride_on_a_symbolic_dim_is_refused_with_the_path() -> None:
    with pytest.raises(tg.IRError, match=r"'0': dim 2 of the output .* fix that input dim to a size"):
        tg.build(ir.Chain(ir.Conv2d(3, 8, 3, stride=2)), T(("N", 3, "H", 16)))


def test_dim_expression_grammar() -> None:
    for ok in ("N*4", "T-1", "N*T", "N+T", "N//2", "-N+20", "N*T*2"):
        assert T((ok, 3)).shape[0] == ok
    for bad in ("N**2", "N*(2)", "__import__('os')", "N; x", "4", "N *4", "N*-1", "a.b", ""):
        with pytest.raises(tg.IRError, match="symbolic dim"):
            T((bad, 3))


def test_two_symbols() -> None:
    model = tg.build(ir.Chain(EMBEDDING, ir.LinearLayer(32, 32)), T(("N", "T"), "int64"))
    assert _types(model) == {"": "f32[N, T, 32]", "0": "f32[N, T, 32]", "1": "f32[N, T, 32]"}
    assert str(tg.build(ir.Chain(EMBEDDING, ir.Flatten(0, 1)), T(("N", "T"), "int64")).output_type) == "f32[N*T, 32]"
    assert str(tg.build(ir.Chain(EMBEDDING, ir.Flatten(1, -1)), T(("N", "T"), "int64")).output_type) == "f32[N, T*32]"


def test_trial_sizes_avoid_fixed_dims() -> None:
    plan = TrialPlan.for_symbols(("N", "T"), {11, 17})
    used = [v for run in plan.runs for v in run.values()]
    assert 11 not in used and 17 not in used
    assert len({run["N"] for run in plan.runs}) == 3 and len({run["T"] for run in plan.runs}) == 3
    assert str(tg.build(ir.Chain(ir.Flatten(0, -1)), T(("N", 11))).output_type) == "f32[N*11]"


def test_parallel_cat_on_channels() -> None:
    net = ir.Chain(ir.Conv2d(3, 8, 3, padding=1),
                   ir.Parallel((ir.Conv2d(8, 4, 1), ir.Conv2d(8, 6, 3, padding=1)), ir.Combine("cat", 1)))
    model = tg.build(net, T(("N", 3, 16, 16)))
    assert _types(model) == {"": "f32[N, 10, 16, 16]", "0": "f32[N, 8, 16, 16]", "1": "f32[N, 10, 16, 16]",
                             "1.0": "f32[N, 4, 16, 16]", "1.1": "f32[N, 6, 16, 16]"}


def _two_heads(output: ir.Seq | DictArg) -> ir.Block:
    graph = ir.Graph((ir.Input("x", T(("N", 8))),),
                     (ir.Op("a", ir.ChildCall("l1"), (ir.Ref("x"),)), ir.Op("b", ir.ChildCall("l2"), (ir.Ref("x"),))),
                     output)
    return ir.Block(ir.ClassRef("mynet", "TwoHeads"), (("l1", ir.LinearLayer(8, 10)), ("l2", ir.LinearLayer(8, 3))),
                    graph)


def test_tuple_and_dict_outputs_are_symbolic_on_the_real_device() -> None:
    model = tg.build(_two_heads(ir.Seq((ir.Ref("a"), ir.Ref("b")))), T(("N", 8)), name="TwoHeads")
    assert str(model.output_type) == "tuple[f32[N, 10], f32[N, 3]]"
    assert model.output_type == ir.ScalarType("tuple", (T(("N", 10)), T(("N", 3))))
    assert str(model.type_at("l1")) == "f32[N, 10]"
    model = tg.build(_two_heads(DictArg((("logits", ir.Ref("a")), ("aux", ir.Ref("b"))))), T(("N", 8)))
    assert str(model.output_type) == "dict[f32[N, 10], f32[N, 3]]"
    assert "meta" not in repr(model.types)


def test_int_and_bool_inputs() -> None:
    graph = ir.Graph((ir.Input("x", T(("N", 8))), ir.Input("mask", T(("N", 8), "bool"))),
                     (ir.Op("h", ir.ChildCall("lin"), (ir.Ref("x"),)),
                      ir.Op("y", ir.MethodCall("masked_fill"), (ir.Ref("h"), ir.Ref("mask"), ir.Const(0.0)))),
                     ir.Ref("y"))
    block = ir.Block(ir.ClassRef("mynet", "Masked"), (("lin", ir.LinearLayer(8, 8)),), graph)
    model = tg.build(block, T(("N", 8)), T(("N", 8), "bool"), name="Masked")
    assert str(model.output_type) == "f32[N, 8]"
    mod = tg.emit(model).materialize()
    x, mask = torch.randn(3, 8), torch.rand(3, 8) > 0.5
    torch.testing.assert_close(mod(x, mask), mod.lin(x).masked_fill(mask, 0.0), rtol=0, atol=0)


def test_shape_error_names_the_node_and_symbolic_input() -> None:
    with pytest.raises(tg.IRError) as info:
        tg.build(ir.Chain(ir.Conv2d(3, 8, 3), ir.Conv2d(4, 8, 3)), T(("N", 3, 32, 32)))
    msg = str(info.value)
    assert "fails at '1' (Conv2d) on input f32[N, 8, 30, 30]" in msg
    assert "expected input[N, 8, 30, 30] to have 4 channels, but got 8 channels" in msg
    assert "fix the arguments of that node" in msg and "[11," not in msg
    assert isinstance(info.value.__cause__, RuntimeError)


def test_shape_error_in_a_nested_node() -> None:
    net = ir.Chain(ir.Conv2d(3, 4, 3, padding=1), ir.Chain(ir.ReLU(), ir.Flatten(), ir.LinearLayer(10, 4)))
    with pytest.raises(tg.IRError, match=r"fails at '1\.2' \(Linear\) on input f32\[N, 1024\]: .*\(Nx1024 and 10x4\)"):
        tg.build(net, T(("N", 3, 16, 16)))


def test_shape_error_inside_a_block() -> None:
    graph = ir.Graph((ir.Input("x", T(("N", 8))),),
                     (ir.Op("a", ir.ChildCall("l1"), (ir.Ref("x"),)), ir.Op("b", ir.ChildCall("l2"), (ir.Ref("a"),))),
                     ir.Ref("b"))
    block = ir.Block(ir.ClassRef("mynet", "Pair"), (("l1", ir.LinearLayer(8, 10)), ("l2", ir.LinearLayer(8, 3))),
                     graph)
    with pytest.raises(tg.IRError, match=r"fails at 'l2' \(Linear\) on input f32\[N, 10\]"):
        tg.build(block, T(("N", 8)))


def test_a_dim_that_cannot_vary_is_reported() -> None:
    """Flatten(0, -1) then Linear(44, 3) runs only when N*4 == 44."""
    with pytest.raises(tg.IRError, match=r"runs at N=11 but fails at '1' \(Linear\) at N=13 .* cannot vary"):
        tg.build(ir.Chain(ir.Flatten(0, -1), ir.LinearLayer(44, 3)), T(("N", 4)))


def test_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    net = ir.Chain(ir.Conv2d(3, 4, 3), ir.Flatten(), ir.LinearLayer(4 * 6 * 6, 5))
    before = torch.random.get_rng_state()
    a, b = tg.build(net, T(("N", 3, 8, 8)), seed=3), tg.build(net, T(("N", 3, 8, 8)), seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    c = tg.build(net, T(("N", 3, 8, 8)), seed=4)
    assert list(a.weights) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert not torch.equal(a.weights["0.weight"], c.weights["0.weight"])
    assert tg.build is build_model


def test_emitted_build_matches_plain_torch_at_two_batch_sizes() -> None:
    net = ir.Chain(ir.Conv2d(3, 8, 3, padding=1), ir.ReLU(), ir.AdaptiveAvgPool2d(1), ir.Flatten(),
                   ir.LinearLayer(8, 5))
    model = tg.build(net, T(("N", 3, 12, 12)), seed=7)
    assert str(model.output_type) == "f32[N, 5]"
    verify(model)
    emitted = tg.emit(model).materialize().eval()
    w = model.weights
    for n in (2, 5):
        x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(n))
        h = F.relu(F.conv2d(x, w["0.weight"], w["0.bias"], padding=1)).mean((2, 3))
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), F.linear(h, w["4.weight"], w["4.bias"]), rtol=1e-5, atol=1e-5)

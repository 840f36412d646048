"""``torchgraft.compose``: a GAN from a hand-built generator and a captured discriminator, a
two-tower model wired by name, the records each model carries, seam types and wiring errors."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft as tg
from tests.frontends.fresh import run_emitted
from torchgraft import ir
from torchgraft.compose import seam_problem
from torchgraft.hand import build_model
from torchgraft.ir.verify import verify

T = ir.TensorType


@pytest.fixture(scope="module")
def generator() -> ir.Model:
    return build_model(ir.Chain(ir.LinearLayer(8, 32), ir.ReLU(), ir.LinearLayer(32, 16)), T(("N", 8)), seed=0)


@pytest.fixture(scope="module")
def d_module() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1)).eval()


@pytest.fixture(scope="module")
def gan(generator: ir.Model, d_module: nn.Module) -> ir.Model:
    disc = tg.capture(d_module, (torch.randn(4, 16),))
    return tg.compose(generator, disc, names=("generator", "discriminator"))


def _g_reference(generator: ir.Model) -> nn.Module:
    ref = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
    ref.load_state_dict(dict(generator.weights), strict=True)
    return ref.eval()


def test_compose_is_the_function_and_the_module_holds_it() -> None:
    module = importlib.import_module("torchgraft.compose")
    assert callable(tg.compose) and tg.compose is module.compose and tg.compose.__module__ == "torchgraft.compose"
    from torchgraft.compose import compose

    assert compose is tg.compose and tg.functional is importlib.import_module("torchgraft.functional").functional


def test_gan_structure_types_and_keys(gan: ir.Model, generator: ir.Model) -> None:
    verify(gan)
    assert isinstance(gan.root, ir.Chain) and gan.root.names == ("generator", "discriminator")
    assert gan.inputs == generator.inputs and gan.output_type == T(("N", 1))
    assert gan.type_at("generator") == T(("N", 16)) and gan.type_at("discriminator.0") == T(("N", 32))
    assert "generator." not in dict(gan.types)
    assert list(gan.weights) == [f"{m}.{i}.{p}" for m in ("generator", "discriminator") for i in (0, 2)
                                 for p in ("weight", "bias")]


def test_gan_emitted_matches_eager_in_a_fresh_process(gan: ir.Model, generator: ir.Model, d_module: nn.Module,
                                                       tmp_path: Path) -> None:
    code = tg.emit(gan)
    code.save(tmp_path)
    assert set(code.materialize().state_dict()) == set(gan.weights)
    z = {"b2": torch.randn(2, 8), "b5": torch.randn(5, 8)}
    outs, _ = run_emitted(tmp_path, z)
    g_ref = _g_reference(generator)
    with torch.no_grad():
        for key, x in z.items():
            torch.testing.assert_close(outs[f"eval.{key}"], d_module(g_ref(x)), rtol=1e-5, atol=1e-5)
            assert outs[f"eval.{key}"].shape == (x.shape[0], 1)


def test_seam_mismatch_names_model_input_and_types(generator: ir.Model) -> None:
    small = tg.capture(nn.Sequential(nn.Linear(12, 1)), (torch.randn(4, 12),))
    with pytest.raises(tg.IRError, match=r"model 'discriminator' input 'input' cannot take the output of 'generator'.*"
                                         r"f32\[N, 16\]"):
        tg.compose(generator, small, names=("generator", "discriminator"))
    typed = build_model(ir.Chain(ir.LinearLayer(12, 1)), T(("N", 12)))
    with pytest.raises(tg.IRError, match=r"model '1' input 'x' .* gives f32\[N, 16\].* is f32\[N, 12\]; dim 1"):
        tg.compose(generator, typed)


def test_gan_trains_with_init_and_predict(gan: ir.Model) -> None:
    """Alternating updates: D with torch.func.grad, G with autograd; Adam on the params dict's tensors."""
    init, predict = tg.functional(gan)
    disc, gen = predict.child("discriminator"), predict.child("generator")
    data = torch.Generator().manual_seed(0)
    real, z = torch.randn(64, 16, generator=data) * 0.5 + 1.0, torch.randn(64, 8, generator=data)
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
    params = {k: v.requires_grad_() for k, v in init(seed=0).items()}
    d_keys = [k for k in params if k.startswith("discriminator.")]
    g_keys = [k for k in params if k.startswith("generator.")]
    assert len(d_keys) == len(g_keys) == 4
    d_opt = torch.optim.Adam([params[k] for k in d_keys], lr=3e-3)
    g_opt = torch.optim.Adam([params[k] for k in g_keys], lr=3e-3)

    def d_loss(p: dict[str, torch.Tensor], fake: torch.Tensor) -> torch.Tensor:
        return (F.binary_cross_entropy_with_logits(disc(p, real), ones)
                + F.binary_cross_entropy_with_logits(disc(p, fake), zeros))

    def distance(p: dict[str, torch.Tensor]) -> float:
        return float((gen(p, z).mean(0) - real.mean(0)).norm())

    with torch.no_grad():
        fake0 = gen(params, z)
        d_before, dist_before = float(d_loss(params, fake0)), distance(params)
    for _ in range(30):
        fake = gen(params, z).detach()
        grads = torch.func.grad(lambda d, f=fake: d_loss({**params, **d}, f))({k: params[k] for k in d_keys})
        for k in d_keys:
            params[k].grad = grads[k]
        d_opt.step()
        g_opt.zero_grad()
        F.binary_cross_entropy_with_logits(predict(params, z), ones).backward()
        g_opt.step()
    with torch.no_grad():
        d_after, dist_after = float(d_loss(params, fake0)), distance(params)
    assert d_after < d_before - 0.2, (d_before, d_after)  # D separates the real data from G's first samples
    assert dist_after < 0.75 * dist_before, (dist_before, dist_after)  # G's samples moved towards the data


class Gate(nn.Module):
    """Data-dependent control flow: it cannot run on the meta device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:
            return x * 2
        return x


def test_seam_into_a_model_that_cannot_run_on_meta_is_checked_on_cpu(generator: ir.Model) -> None:
    gated = tg.capture(nn.Sequential(Gate(), nn.Linear(16, 2)), (torch.randn(3, 16),))
    gated = replace(gated, inputs=())  # no recorded input types: the seam is checked by running it
    rng = torch.random.get_rng_state()
    assert tg.compose(generator, gated).output_type == T(("N", 2))
    narrow = build_model(ir.Chain(ir.LinearLayer(8, 12)), T(("N", 8)))
    with pytest.raises(tg.IRError, match=r"model '1' input .* gives f32\[N, 12\].*cannot be multiplied"):
        tg.compose(narrow, gated)
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize(("out", "need", "problem"), [
    (T(("N", 16)), T(("B", 16)), None),
    (T(("N", 16)), T((4, 16)), None),
    (T((3, 4)), T(("S", "S")), "dim 1 is 4, but symbol S is already 3"),
    (T(("N", 16)), T(("N", 16), "float64"), "dtype float32 is not float64"),
    (T(("N", 16)), T(("N", 4, 4)), "rank 2 is not 3"),
    (T(("N", 16)), ir.ScalarType("int"), "a tensor and a non-tensor value do not match"),
    (T(("N", 16)), ir.UNKNOWN, None),
])
def test_seam_problem(out: ir.ValueType, need: ir.ValueType, problem: str | None) -> None:
    assert seam_problem(out, need) == problem


class Rich(nn.Module):
    """Tied layers, a frozen bias, a non-persistent buffer and an extra state."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = self.a
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        self.a.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) * self.scale

    def get_extra_state(self) -> dict[str, int]:
        return {"v": 1}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.v = state["v"]


def test_records_are_carried_under_the_prefix(generator: ir.Model) -> None:
    torch.manual_seed(2)
    rich = Rich().eval()
    model = tg.compose(generator, tg.capture(rich, (torch.randn(3, 16),)), names=("g", "rich"))
    verify(model)
    assert model.ties == (("rich.b", "rich.a"),) and set(model.frozen) == {"rich.a.bias", "rich.b.bias"}
    assert set(model.constants) == {"rich.scale"} and dict(model.extra_state) == {"rich._extra_state": {"v": 1}}
    built = tg.emit(model).materialize().eval()
    assert built.rich.a is built.rich.b and not built.rich.a.bias.requires_grad and built.rich.v == 1
    z = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(built(z), rich(_g_reference(generator)(z)), rtol=1e-5, atol=1e-5)


def test_helpers_are_shared_and_clashes_refused(generator: ir.Model) -> None:
    f1, f2 = (ir.Helper("f", f"def f(x):\n    return x + {k}\n", "m") for k in (1, 2))
    one, same, other = (replace(generator, helpers=(h,)) for h in (f1, f1, f2))
    side_by_side = {"names": ("a", "b"), "wiring": {"a": "z", "b": "z"}, "outputs": ("a", "b")}
    assert tg.compose(one, same, **side_by_side).helpers == (f1,)
    with pytest.raises(tg.IRError, match=r"models 'a' and 'b' both carry a helper named 'f' with different code"):
        tg.compose(one, other, **side_by_side)


@pytest.mark.parametrize("names", [("a",), ("a", "a"), ("a.b", "c"), "ab"])
def test_bad_names(generator: ir.Model, names: tuple[str, ...]) -> None:
    with pytest.raises(tg.IRError, match="names"):
        tg.compose(generator, generator, names=names)


# --- two towers: several inputs and outputs, wired by name ------------------------------------------

_T16 = T(("N", 16))


@pytest.fixture(scope="module")
def towers() -> tuple[ir.Model, ir.Model, ir.Model, nn.Module]:
    image = build_model(ir.Chain(ir.LinearLayer(12, 16), ir.ReLU()), T(("N", 12)), seed=3)
    torch.manual_seed(4)
    embed = nn.Sequential(nn.Embedding(10, 16)).eval()
    label = tg.capture(embed, (torch.tensor([1, 2, 3, 4]),))
    cat = ir.Op("cat", ir.FunctionCall("torch.cat"), (ir.Seq((ir.Ref("a"), ir.Ref("b"))),), (("dim", ir.Const(1)),))
    fc = ir.Op("fc", ir.ChildCall("fc"), (ir.Ref("cat"),))
    body = ir.Graph((ir.Input("a", _T16), ir.Input("b", _T16)), (cat, fc), ir.Ref("fc"))
    head = build_model(ir.Block(ir.ClassRef("heads", "Head"), (("fc", ir.LinearLayer(32, 5)),), body), _T16, _T16,
                       seed=5)
    return image, label, head, embed


_WIRING = {"image_tower": "image", "label_tower": "label", "head.a": "image_tower", "head.b": "label_tower"}
_NAMES = ("image_tower", "label_tower", "head")

CHILD = r"""
import importlib.util, sys
sys.modules["torchgraft"] = None
from safetensors.torch import load_file, save_file
import torch
spec = importlib.util.spec_from_file_location("emitted", "model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
inp = load_file("inputs.safetensors")
with torch.no_grad():
    out = mod.load().eval()(inp["image"], inp["label"])
save_file({k: v.contiguous() for k, v in out.items()}, "outputs.safetensors")
"""


def _tower_reference(towers: tuple[ir.Model, ir.Model, ir.Model, nn.Module], image: torch.Tensor,
                     label: torch.Tensor) -> dict[str, torch.Tensor]:
    img, _, head, embed = towers
    w, h = img.weights, head.weights
    emb_img = F.relu(F.linear(image, w["0.weight"], w["0.bias"]))
    logits = F.linear(torch.cat((emb_img, embed(label)), dim=1), h["fc.weight"], h["fc.bias"])
    return {"logits": logits, "embedding": emb_img}


def test_two_tower_emitted_matches_eager_in_a_fresh_process(towers: tuple[ir.Model, ir.Model, ir.Model, nn.Module],
                                                            tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = tg.compose(*towers[:3], names=_NAMES, wiring=_WIRING,
                       outputs={"logits": "head", "embedding": "image_tower"}, name="TwoTower")
    verify(model)
    assert isinstance(model.root, ir.Block) and [i.name for i in model.inputs] == ["image", "label"]
    assert model.inputs[0].type == T(("N", 12)) and model.type_at("head") == T(("N", 5))
    code = tg.emit(model)
    assert "class TwoTower(nn.Module)" in code.source
    assert "def forward(self, image: Tensor, label: Tensor)" in code.source
    assert '"logits": ' in code.source and '"embedding": ' in code.source
    code.save(tmp_path)
    image, label = torch.randn(5, 12), torch.tensor([0, 3, 9, 3, 1])
    save_file({"image": image, "label": label}, str(tmp_path / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = load_file(str(tmp_path / "outputs.safetensors"))
    with torch.no_grad():
        ref = _tower_reference(towers, image, label)
    assert set(outs) == {"logits", "embedding"}
    for k in ref:
        torch.testing.assert_close(outs[k], ref[k], rtol=1e-5, atol=1e-5)
    keys = {f"{n}.{k}" for n, m in zip(_NAMES, towers[:3]) for k in m.weights}
    assert set(code.materialize().state_dict()) == keys == set(model.weights)


def test_tuple_outputs_items_and_multi_input_chains(towers: tuple[ir.Model, ir.Model, ir.Model, nn.Module]) -> None:
    img, label, head, _ = towers
    model = tg.compose(img, label, head, names=_NAMES, wiring=_WIRING, outputs=("head", "label_tower"))
    assert model.output_type == ir.ScalarType("tuple", (T(("N", 5)), _T16))
    relu = build_model(ir.Chain(ir.ReLU()), T(("N", 5)))
    chained = tg.compose(head, relu, names=("head", "act"))  # the head takes two inputs: a Block, not a Chain
    assert isinstance(chained.root, ir.Block) and [i.name for i in chained.inputs] == ["a", "b"]
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    h = head.weights
    with torch.no_grad():
        out = tg.emit(chained).materialize().eval()(a, b)
    torch.testing.assert_close(out, F.relu(F.linear(torch.cat((a, b), 1), h["fc.weight"], h["fc.bias"])))

    class Split(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, :8], x[:, 8:]

    split = tg.capture(Split(), (torch.randn(3, 16),))
    relu8 = build_model(ir.Chain(ir.ReLU()), T(("N", 8)))
    pair = tg.compose(split, relu8, names=("split", "act"),
                      wiring={"split": "x", "act": "split.1"}, outputs={"left": "split.0", "right": "act"})
    x = torch.randn(4, 16)
    got = tg.emit(pair).materialize()(x)
    torch.testing.assert_close(got["left"], x[:, :8], rtol=0, atol=0)
    torch.testing.assert_close(got["right"], x[:, 8:].relu(), rtol=0, atol=0)
    with pytest.raises(tg.IRError, match=r"returns tuple\[f32\[N, 8\], f32\[N, 8\]\], which has no item 2"):
        tg.compose(split, relu8, names=("split", "act"), wiring={"split": "x", "act": "split.2"})


@pytest.mark.parametrize(("wiring", "outputs", "error"), [
    ({**_WIRING, "tail": "head"}, None, r"wiring key 'tail' names no model"),
    ({**_WIRING, "head.c": "label"}, None, r"model 'head' has no input 'c'; its inputs are \['a', 'b'\]"),
    ({k: v for k, v in _WIRING.items() if k != "head.b"}, None, r"model 'head' inputs \['b'\] are not wired"),
    ({**_WIRING, "head": "image"}, None, r"model 'head' takes \['a', 'b'\]; wire each"),
    ({**_WIRING, "head.b": "tower.x"}, None, r"wiring source 'tower.x' names no model"),
    ({**_WIRING, "image_tower": "head"}, {"logits": "head"}, r"cycle image_tower -> head -> image_tower"),
    (_WIRING, {"emb": "image_tower"}, r"the output of \['label_tower', 'head'\] is never used"),
    ({**_WIRING, "label_tower.x": "label"}, None, r"model 'label_tower' has no input 'x'; its inputs are \['input'\]"),
    (_WIRING, {"logits": "image"}, r"outputs name \[\"input 'image'\"\], which are no models"),
])
def test_wiring_errors(towers: tuple[ir.Model, ir.Model, ir.Model, nn.Module], wiring: dict[str, str],
                       outputs: dict[str, str] | None, error: str) -> None:
    with pytest.raises(tg.IRError, match=error):
        tg.compose(*towers[:3], names=_NAMES, wiring=wiring, outputs=outputs)


def test_wired_seam_types_are_checked(towers: tuple[ir.Model, ir.Model, ir.Model, nn.Module]) -> None:
    img, label, head, _ = towers
    narrow = build_model(ir.Chain(ir.LinearLayer(12, 8), ir.ReLU()), T(("N", 12)))
    with pytest.raises(tg.IRError, match=r"model 'head' input 'a' cannot take the output of 'image_tower': it gives "
                                         r"f32\[N, 8\], the input's type is f32\[N, 16\]"):
        tg.compose(narrow, label, head, names=_NAMES, wiring=_WIRING)
    with pytest.raises(tg.IRError, match=r"model 'head' input 'b' cannot take input 'x': it gives f32\[N, 12\]"):
        tg.compose(img, head, names=("image_tower", "head"),  # one input feeds two models: their types must agree
                   wiring={"image_tower": "x", "head.a": "image_tower", "head.b": "x"})


_NO_SOURCE: dict[str, object] = {"nn": nn}
exec(compile("""  # a class whose source cannot be read: its size branch becomes a run-time guard
class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * 2 if x.shape[0] > 3 else self.lin(x)
""", "<no source>", "exec"), _NO_SOURCE)


class WithBranchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g = _NO_SOURCE["Branchy"]()  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(x) + 1


def test_guards_of_a_composed_model_name_their_new_paths() -> None:
    enc = tg.capture(WithBranchy(), (torch.randn(2, 4),))
    head = tg.capture(nn.Sequential(nn.Linear(4, 2)), (torch.randn(2, 4),))
    rebuilt = tg.emit(tg.compose(enc, head, names=("enc", "head"))).materialize()
    with pytest.raises(ValueError, match=r"^enc\.g \(Branchy\) was captured where a size comparison"):
        rebuilt(torch.randn(5, 4))

"""``universal`` models of each type: typed, verified, emitted, and run the same in a fresh process.

One module fixture builds the models, saves them with their inputs, and runs them all in one new
process (``fresh.run_fresh``); each test then checks its model against ``emit(m).materialize()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import torchgraft as tg
from tests.composable.fresh import Cases, reference, run_fresh, save_case
from torchgraft import ir
from torchgraft.composable import Input, Output, SpecError, UniversalModel, universal

TOL = {"rtol": 1e-5, "atol": 1e-5}
IMAGE = Input(("N", 3, 64, 64), name="image")
TEXT = Input(("N", "L"), dtype="int64", vocab=1000, name="text", compute="high")
LABEL = Input(("N",), dtype="int64", vocab=10, name="label")
SOUND = Output(("N", 1, 4096), name="sound")


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _animal_cases() -> Cases:
    g = torch.Generator().manual_seed(1)
    return {f"n{n}l{length}": {"image": torch.randn(n, 3, 64, 64, generator=g),
                               "text": torch.randint(0, 1000, (n, length), generator=g),
                               "label": torch.randint(0, 10, (n,), generator=g)} for n, length in ((2, 5), (3, 9))}


def _models() -> dict[str, tuple[UniversalModel, Cases]]:
    g = torch.Generator().manual_seed(2)
    photo = Input(("N", 3, 64, 64), name="photo")
    tokens, pitch = Input(("N", "L"), vocab=50, name="tokens"), Input(("N", 3, "L"), name="pitch")
    return {
        "animal": (universal(unaligned=[IMAGE, TEXT, LABEL], aligned=[], outputs=[SOUND], compute="small"),
                   _animal_cases()),
        "u": (universal(unaligned=[], aligned=[photo], outputs=[Output(("N", 1, 64, 64), name="mask")],
                        compute="small"),
              {f"n{n}": {"photo": torch.randn(n, 3, 64, 64, generator=g)} for n in (2, 3)}),
        "cls": (universal(unaligned=[IMAGE], aligned=[], outputs=[Output(("N",), vocab=10, name="cls")],
                          compute="small", encoders={"image": tg.capture(_cnn(), (torch.randn(2, 3, 64, 64),))}),
                {"n2": {"image": torch.randn(2, 3, 64, 64, generator=g)}}),
        "straight": (universal(unaligned=[Input(("N",), vocab=4, name="speaker")], aligned=[tokens, pitch],
                               outputs=[Output(("N", "L"), vocab=5, name="tags"), Output(("N",), vocab=2, name="ok")]),
                     {f"l{length}": {"speaker": torch.randint(0, 4, (2,), generator=g),
                                     "tokens": torch.randint(0, 50, (2, length), generator=g),
                                     "pitch": torch.randn(2, 3, length, generator=g)} for length in (5, 9)}),
        "heads": (universal([Input(("N", 8), name="feats"), Input(("N",), name="scale")], [],
                            [Output(("N",), name="value"), Output(("N", 2, 16), name="curve"),
                             Output(("N", 32, 32), vocab=4, name="seg"), Output(("N", 1, 1100), name="wave")]),
                  {"n3": {"feats": torch.randn(3, 8, generator=g), "scale": torch.randn(3, generator=g)}}),
    }


@dataclass
class Built:
    model: UniversalModel
    module: nn.Module
    source: str
    cases: Cases
    expected: dict[str, torch.Tensor]
    fresh: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("composable")
    out: dict[str, Built] = {}
    folders: dict[str, Path] = {}
    for name, (model, cases) in _models().items():
        code = tg.emit(model)
        folders[name] = save_case(root / name, code, cases)
        module = code.materialize()
        out[name] = Built(model, module, code.source, cases, reference(module, cases), {})
    fresh = run_fresh(list(folders.values()))
    for name, folder in folders.items():
        out[name].fresh = fresh[folder]
    return out


def _same_everywhere(b: Built) -> None:
    ir.verify(b.model)
    assert set(b.module.state_dict()) == set(b.model.weights)
    assert b.model.plan is not None and b.model.plan.params == sum(v.numel() for v in b.model.weights.values())
    assert set(b.fresh) == set(b.expected)
    for key, want in b.expected.items():
        torch.testing.assert_close(b.fresh[key], want, **TOL)


def test_animal_sound_fan_in_straight_embedding_fan_out(built: dict[str, Built]) -> None:
    b = built["animal"]
    assert [(r.name, r.model_type) for r in b.model.plan.rows] == [  # type: ignore[union-attr]
        ("image", "fan-in"), ("text", "straight"), ("label", "embedding"), ("trunk", "trunk"), ("sound", "fan-out")]
    assert str(b.model.output_type) == "f32[N, 1, 4096]"
    assert [str(i.type) for i in b.model.inputs] == ["f32[N, 3, 64, 64]", "i64[N, L]", "i64[N]"]
    assert str(b.model.type_at("text")) == "f32[N, 32]" and "L" in str(b.model.type_at("text.embed"))
    assert re.search(r"def forward\(self, image: Tensor, text: Tensor, label: Tensor\)", b.source)
    assert [name for name, _ in b.module.named_children()] == ["image", "text", "label", "trunk", "sound"]
    for case, args in b.cases.items():  # two batch sizes, two text lengths
        assert b.expected[case].shape == (args["image"].shape[0], 1, 4096)
    _same_everywhere(b)


def test_u_model_has_skip_connections(built: dict[str, Built]) -> None:
    b = built["u"]
    assert [(r.name, r.model_type) for r in b.model.plan.rows] == [  # type: ignore[union-attr]
        ("photo", "U"), ("aligned", "U"), ("trunk", "trunk"), ("mask", "U")]
    assert str(b.model.output_type) == "f32[N, 1, 64, 64]"
    assert "torch.cat((self.up(x), skip), 1)" in b.source and "def forward(self, photo: Tensor)" in b.source
    assert b.expected["n3"].shape == (3, 1, 64, 64)
    _same_everywhere(b)


def test_captured_encoder_is_plugged_in(built: dict[str, Built]) -> None:
    b = built["cls"]
    cnn = _cnn()
    assert b.model.plan.row("image").model_type == "captured"  # type: ignore[union-attr]
    assert str(b.model.output_type) == "f32[N, 10]"
    x = b.cases["n2"]["image"]
    torch.testing.assert_close(b.module.image.backbone(x), cnn(x), rtol=0, atol=0)  # its own weights, unchanged
    torch.testing.assert_close(b.model.weights["image.backbone.2.weight"], cnn[2].weight, rtol=0, atol=0)
    assert b.expected["n2"].shape == (2, 10)
    _same_everywhere(b)


def test_captured_encoder_must_take_the_input() -> None:
    wrong = tg.capture(_cnn(), (torch.randn(2, 3, 32, 32),))
    gray = Input(("N", 1, 64, 64), name="image")
    with pytest.raises(SpecError, match=r"encoders\['image'\] does not fit Input 'image' \(f32\[N, 1, 64, 64\]\): "
                                        r"dim 1 is 3 in the encoder's input type f32\[N, 3, 32, 32\]"):
        universal([gray], [], [Output(("N",), vocab=3, name="y")], encoders={"image": wrong})


def test_straight_aligned_sequence(built: dict[str, Built]) -> None:
    b = built["straight"]
    assert b.model.plan.row("tags").model_type == "straight"  # type: ignore[union-attr]
    assert str(b.model.output_type) == "dict[f32[N, 5, L], f32[N, 2]]"
    assert b.expected["l9.tags"].shape == (2, 5, 9) and b.expected["l5.ok"].shape == (2, 2)
    _same_everywhere(b)


def test_heads_and_a_cropped_fan_out(built: dict[str, Built]) -> None:
    b = built["heads"]
    assert str(b.model.output_type) == "dict[f32[N], f32[N, 2, 16], f32[N, 4, 32, 32], f32[N, 1, 1100]]"
    assert ".narrow(2, 0, 1100)" in b.source  # 35 * 2**5 = 1120 positions, cropped exactly
    assert {k: tuple(v.shape) for k, v in b.expected.items()} == {
        "n3.value": (3,), "n3.curve": (3, 2, 16), "n3.seg": (3, 4, 32, 32), "n3.wave": (3, 1, 1100)}
    _same_everywhere(b)


def test_passes_apply_and_keep_the_plan(built: dict[str, Built]) -> None:
    model = built["animal"].model
    after = tg.passes.run(model, "swap-activation{from=silu to=relu}").model
    ir.verify(after)
    assert isinstance(after, UniversalModel) and after.plan == model.plan
    assert "nn.SiLU" not in tg.emit(after).source and "nn.ReLU" in tg.emit(after).source


def test_trains_on_synthetic_data(built: dict[str, Built]) -> None:
    module = tg.emit(built["animal"].model).materialize().train()
    args = _animal_cases()["n2l5"]
    target = torch.sin(torch.linspace(0, 20, 4096)).expand(2, 1, 4096)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only contend
    try:
        for _ in range(20):
            opt.zero_grad()
            loss = nn.functional.mse_loss(module(**args), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_budget_builds_the_largest_model_within_it() -> None:
    specs = ([Input(("N", 8), name="x")], [], [Output(("N",), vocab=3, name="y")])
    small = universal(*specs, compute="small")  # type: ignore[arg-type]
    high = universal(*specs, compute="high")  # type: ignore[arg-type]
    budget = (small.plan.params + high.plan.params) // 2  # type: ignore[union-attr]
    chosen = universal(*specs, compute=budget)  # type: ignore[arg-type]
    assert chosen.plan is not None and small.plan.params < chosen.plan.params <= budget  # type: ignore[union-attr]
    assert sum(v.numel() for v in chosen.weights.values()) == chosen.plan.params


def test_lora_swap_and_fuse_apply_and_keep_outputs(built: dict[str, Built]) -> None:
    """The generated model is an ordinary IR model: LoRA (B starts at zero) and fuse-conv-bn leave its outputs
    as they were; swapping silu to relu and back gives the original outputs again."""
    b = built["animal"]
    case = _animal_cases()["n3l9"]
    with torch.no_grad():
        want = b.module.eval()(**case)
    result = tg.passes.run(b.model, "lora{r=4},fuse-conv-bn,swap-activation{from=silu to=relu},"
                                    "swap-activation{from=relu to=silu}")
    assert len(result.reports[0].matches) > 0  # every Linear got an adapter
    ir.verify(result.model)
    with torch.no_grad():
        got = tg.emit(result.model).materialize().eval()(**case)
    torch.testing.assert_close(got, want, **TOL)

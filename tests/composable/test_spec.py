"""Input/Output specs: structure inference and one clear error per bad spec; plans and compute levels."""

from __future__ import annotations

import pytest

import torchgraft as tg
from torchgraft.composable import CONFIGS, HIGH_AT, Input, Output, SpecError, plan_of, universal

IMAGE = Input(("N", 3, 64, 64), name="image")
TEXT = Input(("N", "L"), dtype="int64", vocab=1000, name="text", compute="high")
LABEL = Input(("N",), dtype="int64", vocab=10, name="label")
SOUND = Output(("N", 1, 4096), name="sound")


def test_structure_is_inferred() -> None:
    assert (IMAGE.structure, IMAGE.spatial_dims, IMAGE.discrete, IMAGE.channels) == ("high", 2, False, 3)
    assert (TEXT.structure, TEXT.spatial_dims, TEXT.discrete, TEXT.grid) == ("low", 1, True, ("L",))
    assert (LABEL.structure, LABEL.spatial_dims, LABEL.discrete) == ("point", 0, True)
    assert (SOUND.structure, SOUND.spatial_dims, SOUND.discrete) == ("high", 1, False)
    assert Input(("N", 8), name="x").structure == "point" and Input(("N",), name="x").channels == 1
    assert Input(("N", 1, HIGH_AT - 1), name="x").structure == "low"
    assert Input(("N", 1, HIGH_AT), name="x").structure == "high"
    assert Input(("N", 3, 16, 16), name="x", structure="high").structure == "high"  # the spec says otherwise
    assert Input(("N", "L"), vocab=5, name="t").dtype == "int64"  # vocab implies a discrete dtype
    assert str(TEXT.type) == "i64[N, L]" and IMAGE.describe() == "high 2-D continuous"


def test_outputs_of_discrete_data_are_logits_on_dim_1() -> None:
    assert Output(("N",), vocab=10, name="cls").result_shape == ("N", 10)
    assert Output(("N", 64, 64), vocab=4, name="seg").result_shape == ("N", 4, 64, 64)
    assert SOUND.result_shape == ("N", 1, 4096)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Input(("N", 3, 64, 64), name="image", compute="dense"),
     r"Input 'image': dense computation .* high-structure input \(4096 positions.*drop compute='dense'"),
    (lambda: Input(("N", "L"), dtype="int64", name="text"), r"'text': dtype int64 is discrete and needs vocab="),
    (lambda: Input(("N", 4), dtype="float32", vocab=3, name="x"), r"'x': vocab=3 is given but dtype float32 is"),
    (lambda: Input(("N", 4), name="my input"), r"'my input' is not a Python identifier"),
    (lambda: Input(("N", 4)), r"Input needs a name="),
    (lambda: Input(("N", 4), name="training"), r"'training' clashes with an nn.Module attribute"),
    (lambda: Input(("N", "C", 8), name="x"), r"dim 1 of continuous data is its channels"),
    (lambda: Input(("N", 0), name="x"), r"dim 1 is 0"),
    (lambda: Input(("N", 4), name="x", dtype="complex64"), r"dtype 'complex64' is not one of"),
    (lambda: Input(("N", 4), name="x", compute="huge"), r"compute='huge' is not one of"),
    (lambda: Input(("N", 3, "H", "W"), name="x", structure="high"), r"structure='high' needs a fixed grid"),
    (lambda: Input(("N", 4), name="x", structure="low"), r"structure='low' does not fit grid \(\)"),
    (lambda: Output(("N",), vocab=1, name="y"), r"vocab must be an int >= 2"),
])
def test_bad_specs(make: object, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(("kw", "match"), [
    ({"outputs": [SOUND]}, r"Output 'sound' has no path: the model has no inputs; give unaligned="),
    ({"unaligned": [IMAGE]}, r"no outputs"),
    ({"unaligned": [IMAGE], "outputs": [Output(("N",), vocab=3, name="image")]},
     r"the name 'image' is used by two specs \(Input and Output\)"),
    ({"unaligned": [Input(("N", 4), name="trunk")], "outputs": [SOUND]}, r"'trunk' takes the name of a shared part"),
    ({"aligned": [IMAGE], "outputs": [Output(("N", 1, 32, 32), name="mask")]},
     r"aligned Input 'image' has grid \(64, 64\) but Output 'mask' has grid \(32, 32\).*or pass 'image' in "
     r"unaligned"),
    ({"aligned": [LABEL], "outputs": [SOUND]}, r"aligned Input 'label' is pointwise"),
    ({"aligned": [IMAGE, Input(("N", 1, 32, 32), name="depth")], "outputs": [Output(("N", 1, 64, 64), name="m")]},
     r"aligned inputs 'image' .* and 'depth' .* differ"),
    ({"unaligned": [IMAGE], "outputs": [Output(("N", "L"), vocab=3, name="tags")]},
     r"Output 'tags' has no path: its grid \('L',\) has a variable size.*aligned="),
    ({"unaligned": [IMAGE], "outputs": [Output(("B",), vocab=3, name="y")]}, r"batch dim 'B' but Input 'image'"),
    ({"unaligned": [SOUND], "outputs": [SOUND]}, r"unaligned must hold Input specs, got \['Output'\]"),
    ({"unaligned": [IMAGE], "outputs": [SOUND], "encoders": {"text": None}}, r"encoders names \['text'\]"),
    ({"unaligned": [IMAGE], "outputs": [SOUND], "encoders": {"image": "resnet"}}, r"must be an ir.Model"),
    ({"unaligned": [IMAGE], "outputs": [SOUND], "compute": "huge"}, r"compute='huge' is not one of"),
    ({"unaligned": [Input(("N", 1, 4, 4, 4, 4), name="x")], "outputs": [SOUND]}, r"'x' has 4 grid dims"),
    ({"unaligned": [IMAGE], "outputs": [SOUND], "compute": 1000},
     r"compute=1,000 parameters is less than the smallest model these specs make \([\d,]+ parameters"),
])
def test_bad_combinations(kw: dict[str, object], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        universal(**kw)  # type: ignore[arg-type]
    assert issubclass(SpecError, tg.TorchgraftError) and issubclass(SpecError, ValueError)


def test_params_grow_with_compute_and_a_budget_picks_the_largest_that_fits() -> None:
    specs = ([IMAGE, Input(("N", "L"), vocab=1000, name="text"), LABEL], [], [SOUND])
    small, medium, high = (plan_of(*specs, compute=c) for c in ("small", "medium", "high"))  # type: ignore[arg-type]
    assert small.params < medium.params < high.params
    assert small.config == CONFIGS["small"] and "width 32" in str(small)
    fits = plan_of(*specs, compute=medium.params)  # type: ignore[arg-type]
    assert fits.params == medium.params and fits.compute == f"budget {medium.params:,}"
    between = plan_of(*specs, compute=(medium.params + high.params) // 2)  # type: ignore[arg-type]
    assert medium.params <= between.params <= (medium.params + high.params) // 2
    assert plan_of(*specs, compute=10**12).params > high.params  # the ladder goes beyond "high"


def test_plan_table() -> None:
    plan = plan_of([IMAGE, TEXT, LABEL], [], [SOUND], compute="medium")
    rows = {r.name: (r.role, r.structure, r.model_type) for r in plan.rows}
    assert rows == {"image": ("input", "high 2-D continuous", "fan-in"),
                    "text": ("input", "low 1-D discrete", "straight"),
                    "label": ("input", "point discrete", "embedding"), "trunk": ("shared", "-", "trunk"),
                    "sound": ("output", "high 1-D continuous", "fan-out")}
    assert plan.row("text").width == CONFIGS["high"].width  # the input's own compute hint
    text = str(plan)
    assert text.splitlines()[1].split() == ["name", "role", "structure", "model", "type", "width", "depth", "params"]
    assert f"{plan.params:,}" in text.splitlines()[-1] and "compute medium" in text
    with pytest.raises(KeyError, match="rows: "):
        plan.row("nope")

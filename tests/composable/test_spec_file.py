"""Spec files (``torchgraft new SPEC.toml -o DIR``): the bundled example builds the same model as the
Python specs, the command writes a folder that loads and runs, and every bad file is one error line
naming the file, the entry, the key and the fix."""

from __future__ import annotations

import configparser
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import torchgraft as tg
from torchgraft.cli import EXIT_ERROR, main
from torchgraft.composable import Input, Output, UniversalModel, universal
from torchgraft.composable.spec_file import EXAMPLE, ModelSpec, SpecFileError, parse_spec, read_spec

ROOT = Path(__file__).resolve().parents[2]
IMAGE = Input(("N", 3, 64, 64), name="image")
TEXT = Input(("N", "L"), dtype="int64", vocab=1000, name="text", compute="high")
LABEL = Input(("N",), dtype="int64", vocab=10, name="label")
SOUND = Output(("N", 1, 4096), name="sound")
GOOD = '[[unaligned]]\nname = "x"\nshape = ["N", 8]\n[[outputs]]\nname = "y"\nshape = ["N"]\nvocab = 3\n'


@pytest.fixture(scope="module")
def python_model() -> UniversalModel:
    return universal([IMAGE, TEXT, LABEL], [], [SOUND], compute="medium", name="AnimalSound", seed=0)


def test_example_file_is_the_python_specs() -> None:
    spec = read_spec(EXAMPLE)
    assert spec == ModelSpec((IMAGE, TEXT, LABEL), (), (SOUND,), "AnimalSound", "medium", 0, str(EXAMPLE))
    docs = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "composable.md").read_text(), flags=re.S)
    assert docs and parse_spec(docs[0], "docs") == ModelSpec(spec.unaligned, spec.aligned, spec.outputs, spec.name,
                                                              spec.compute, spec.seed, "docs")


def test_example_builds_the_same_model_as_universal(python_model: UniversalModel) -> None:
    built = read_spec(EXAMPLE).build()
    assert built.plan == python_model.plan and str(built.plan) == str(python_model.plan)
    assert built.name == "AnimalSound" and built.inputs == python_model.inputs
    assert list(built.weights) == list(python_model.weights)
    for key, value in python_model.weights.items():
        assert torch.equal(built.weights[key], value), key  # the same seed gives the same weights
    other = parse_spec(EXAMPLE.read_text().replace("seed = 0", "seed = 1"), "seed1").build()
    assert not torch.equal(other.weights["trunk.fuse.0.weight"], python_model.weights["trunk.fuse.0.weight"])


def test_example_ships_with_the_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert EXAMPLE.parent == ROOT / "torchgraft" / "examples" and EXAMPLE.is_file()
    assert "*.toml" in cfg["options.package_data"]["torchgraft.examples"]


def _import(path: Path) -> object:
    spec = importlib.util.spec_from_file_location("spec_file_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_new_writes_a_model_that_loads_and_runs(python_model: UniversalModel, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "animal"
    assert main(["new", str(EXAMPLE), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(python_model.plan) in printed
    assert "AnimalSound.forward(image, text, label) -> f32[N, 1, 4096]" in printed
    assert {p.name for p in out.iterdir()} == {"model.py", "weights.safetensors", "example_inputs.safetensors"}
    source = (out / "model.py").read_text()
    assert "class AnimalSound(nn.Module)" in source and "import torchgraft" not in source
    net = _import(out / "model.py").load().eval()  # type: ignore[attr-defined]
    reference = tg.emit(python_model).materialize().eval()
    assert list(net.state_dict()) == list(python_model.weights)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, length in ((2, 5), (3, 11)):  # two batch sizes, two text lengths
            args = (torch.randn(n, 3, 64, 64, generator=g), torch.randint(0, 1000, (n, length), generator=g),
                    torch.randint(0, 10, (n,), generator=g))
            y = net(*args)
            assert y.shape == (n, 1, 4096)
            assert_close(y, reference(*args), rtol=1e-5, atol=1e-5)


def test_cli_help_lists_new(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0 and "new" in capsys.readouterr().out
    assert main(["new", "--help"]) == 0 and "SPEC.toml" in capsys.readouterr().out


BAD = [  # (file text, what the one error line must say)
    ('nam = "X"\n' + GOOD, ["the top level: unknown key 'nam'", "did you mean 'name'?"]),
    (GOOD.replace('shape = ["N", 8]', 'shape = ["N", 8]\nvocabb = 3'),
     ["[[unaligned]] entry 1 ('x'): unknown key 'vocabb'", "did you mean 'vocab'?", "name, shape, dtype, vocab"]),
    (GOOD.replace("vocab = 3", 'vocab = "3"'),
     ["[[outputs]] entry 1 ('y'): key 'vocab' must be an integer such as 1000", "got a string ('3')"]),
    (GOOD.replace("vocab = 3", "vocab = true"), ["[[outputs]] entry 1 ('y'): key 'vocab' must be an integer",
                                                 "got a boolean"]),
    ('compute = 1.5\n' + GOOD, ["the top level: key 'compute' must be \"small\"", "got a float (1.5)"]),
    ('seed = "0"\n' + GOOD, ["the top level: key 'seed' must be an integer such as 0", "got a string"]),
    (GOOD.replace('name = "x"\n', ""), ["[[unaligned]] entry 1: missing key 'name'", 'add name = "image"']),
    (GOOD.replace('shape = ["N"]\n', ""), ["[[outputs]] entry 1 ('y'): missing key 'shape'", "add shape = ["]),
    (GOOD.replace('shape = ["N", 8]', 'shape = "N, 8"'),
     ["[[unaligned]] entry 1 ('x'): key 'shape' must be an array of sizes and symbols", "got a string ('N, 8')"]),
    (GOOD.replace('shape = ["N", 8]', 'shape = ["N", 0]'),
     ["[[unaligned]] entry 1 ('x'): dim 1 is 0; a dim is a positive size or a symbol name"]),
    (GOOD.replace('shape = ["N", 8]', 'shape = ["N", 8.5]'), ["[[unaligned]] entry 1 ('x'): dim 1 is 8.5"]),
    (GOOD.replace('name = "x"', 'name = "x y"'), ["[[unaligned]] entry 1 ('x y'):", "not a Python identifier"]),
    (GOOD.replace("[[unaligned]]", "[unaligned]"),
     ["key 'unaligned' must be an array of tables, got a table", "write [[unaligned]] (double brackets)"]),
    (GOOD.split("[[outputs]]")[0], ["no [[outputs]]", "add one table per output"]),
    ('[[unaligned]]\nname = x\n', ["not valid TOML", "line 2", "strings need quotes"]),
    (GOOD.replace('shape = ["N", 8]', 'shape = ["N", 8]\nvocab = 4\ndtype = "float32"'),
     ["[[unaligned]] entry 1 ('x'): vocab=4 is given but dtype float32 is continuous"]),
    ('[[aligned]]\nname = "x"\nshape = ["N", 3, 64, 64]\n[[outputs]]\nname = "y"\nshape = ["N", 1, 32, 32]\n',
     ["universal: aligned Input 'x' has grid (64, 64) but Output 'y' has grid (32, 32)"]),
    ('compute = 10\n' + GOOD, ["compute=10 parameters is less than the smallest model", "raise the budget"]),
]


@pytest.mark.parametrize(("text", "needles"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_spec_file_is_one_error_line(text: str, needles: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, out = tmp_path / "bad.toml", tmp_path / "out"
    path.write_text(text)
    assert main(["new", str(path), "-o", str(out)]) == EXIT_ERROR
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"torchgraft: error: {path}: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists() and captured.out == ""
    with pytest.raises(SpecFileError):  # the same error from Python
        read_spec(path).build()


def test_missing_file_points_at_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", str(tmp_path / "nothere.toml"), "-o", str(tmp_path / "out")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "nothere.toml: no such spec file" in err and str(EXAMPLE) in err


def test_spec_file_values_reach_universal() -> None:
    text = ('name = "Tagger"\ncompute = 20000\nseed = 3\n'
            '[[aligned]]\nname = "tokens"\nshape = ["N", "L"]\nvocab = 50\n'
            '[[outputs]]\nname = "tags"\nshape = ["N", "L"]\nvocab = 5\ncompute = "small"\n')
    spec = parse_spec(text, "tagger.toml")
    assert spec.aligned == (Input(("N", "L"), vocab=50, name="tokens"),) and spec.compute == 20000
    m = spec.build()
    assert m.name == "Tagger" and m.plan is not None and m.plan.compute == "budget 20,000" and m.plan.params <= 20000
    assert spec.plan() == m.plan
    assert [tuple(x.shape) for x in spec.example_inputs()] == [(2, 8)]
    assert str(tg.emit(m).materialize()(*spec.example_inputs()).shape) == "torch.Size([2, 5, 8])"


def test_the_error_line_in_the_docs_is_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    docs = (ROOT / "docs" / "composable.md").read_text()
    line = next(ln for ln in docs.splitlines() if ln.startswith("torchgraft: error: animal.toml"))
    monkeypatch.chdir(tmp_path)
    Path("animal.toml").write_text(EXAMPLE.read_text().replace("vocab = 1000", 'vocab = "1000"'))
    assert main(["new", "animal.toml", "-o", "out"]) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == line

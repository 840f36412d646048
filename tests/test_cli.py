"""The ``torchgraft`` command, run in-process through ``torchgraft.cli.main``; specs and progress."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from torchgraft.backends.torch.emitter import import_file
from torchgraft.cli import main
from torchgraft.passes import REGISTRY
from torchgraft.progress import Progress, enabled_for, step, track
from torchgraft.specs import SpecError, load_spec, parse_shape

SPEC = "tests.cli_models:small_net"
GOLDEN = Path(__file__).resolve().parent / "golden"
PIPELINE = "swap-activation{from=relu to=silu},fuse-conv-bn"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


def _golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; TORCHGRAFT_UPDATE_GOLDEN=1 rewrites it (a missing one fails)."""
    path = GOLDEN / name
    if os.environ.get("TORCHGRAFT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden {path}: write it with TORCHGRAFT_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"output changed; review and rerun with TORCHGRAFT_UPDATE_GOLDEN=1 ({path})"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``torchgraft ARGV``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchgraft: error: "), err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# the commands -------------------------------------------------------------------------------------

def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("inspect", "rewrite", "graph", "diff", "passes", "demo"):
        assert command in out
    code, out, _ = run(capsys, "rewrite", "--help")
    assert code == 0 and "--pipeline" in out and "--check" in out and "--probes" in out


def test_inspect_table_and_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", SPEC)
    assert code == 0, err
    assert "blocks.0.conv1" in out and "f32[N, 16, 32, 32]" in out and "2,304" in out
    assert "total params: 9,978" in out and "capture:" in out
    _golden("cli_inspect.txt", out)


def test_inspect_depth_and_input_for_a_model_without_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "tests.cli_models:model_only", "--input", "2x3x32x32", "--depth", "1")
    assert code == 0, err
    assert "model Net(x: f32[N, 3, 32, 32]) -> f32[N, 10]" in out
    assert "blocks.0" not in out and "deeper modules not shown" in out


def test_inspect_spec_with_kwargs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "tests.cli_models:with_kwargs")
    assert code == 0, err
    assert "scale" in out and "f32[N, 2]" in out


def test_rewrite_emits_a_folder_that_loads_and_is_a_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "rewrite", SPEC, "-p", PIPELINE, "-o", str(out_dir))
    assert code == 0, err
    assert "swap-activation: 5 site(s)" in out and "fuse-conv-bn: 5 site(s)" in out and "wrote" in out
    assert (out_dir / "model.py").is_file() and (out_dir / "weights.safetensors").is_file()
    model = import_file(out_dir / "model.py").load().eval()
    net, (x,) = load_spec(SPEC).module, load_spec(SPEC).args
    assert "SiLU" in (out_dir / "model.py").read_text() and model(x).shape == net(x).shape
    code, out, err = run(capsys, "inspect", str(out_dir), "--depth", "1")
    assert code == 0, err
    assert "total params: 9,898" in out


def test_rewrite_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "rewrite", SPEC, "-p", "fuse-conv-bn", "-o", str(tmp_path / "a"), "--check")
    assert code == 0, err
    assert "check: ok" in out
    code, out, err = run(capsys, "rewrite", SPEC, "-p", PIPELINE, "-o", str(tmp_path / "b"), "--check")
    assert code == 0, err  # swap-activation changes outputs: reported, not a failure
    assert "check: FAILED" in out and "differences are expected" in out
    code, out, err = run(capsys, "rewrite", SPEC, "-p", "fuse-conv-bn", "-o", str(tmp_path / "c"), "--check",
                         "--modes", "eval,train")
    assert code == 1 and "train" in out  # a fused model is an inference model


def test_rewrite_check_probes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "rewrite", SPEC, "-o", str(tmp_path / "a"), "--check")
    assert code == 0, err
    assert "check: ok (probes: 2 skipped)" in out and "probes:" in out
    for line in ("batch=1", "batch=5", "repeat=3", "length    -         -         skipped"):
        assert line in out, line
    code, out, err = run(capsys, "rewrite", SPEC, "-o", str(tmp_path / "b"), "--check", "--probes", "example")
    assert code == 0, err
    assert "check: ok\n" in out and "probes:" not in out and "batch=1" not in out
    code, out, err = run(capsys, "rewrite", SPEC, "-o", str(tmp_path / "c"), "--check", "--probes", "batch,bogus")
    assert_one_line_error(code, out, err, "--probes 'batch,bogus'", "example, batch, length, padding, repeat")
    assert not (tmp_path / "c").exists()  # refused before the capture


def test_graph_dot_and_mermaid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, dot, err = run(capsys, "graph", SPEC, "--format", "dot")
    assert code == 0, err
    assert dot.startswith('digraph "Net"') and "subgraph cluster_" in dot and "->" in dot
    _golden("cli_graph_dot.txt", dot)
    code, mermaid, err = run(capsys, "graph", SPEC, "--format", "mermaid", "--depth", "2")
    assert code == 0, err
    assert mermaid.startswith("flowchart TB") and "subgraph" in mermaid and "-->" in mermaid
    _golden("cli_graph_mermaid.txt", mermaid)
    code, out, err = run(capsys, "graph", SPEC, "--format", "html", "-o", str(tmp_path / "net.html"))
    assert code == 0, err
    assert (tmp_path / "net.html").read_text().startswith("<!DOCTYPE html>")


def test_diff_text_and_picture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "diff", SPEC, "-p", "fuse-conv-bn")
    assert code == 0, err
    assert "removed (4): blocks.0.bn1" in out and "stem.1" in out
    assert "--- before" in out and "+++ after" in out and "-    1  BatchNorm2d(16)" in out
    code, out, err = run(capsys, "diff", SPEC, "-p", "fuse-conv-bn", "--format", "dot")
    assert code == 0, err
    assert "cluster_before" in out and "cluster_after" in out and "#fecaca" in out and "#fde68a" in out


def test_passes_lists_every_registered_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "passes")
    assert code == 0
    for name in REGISTRY:
        assert f"\n{name}" in "\n" + out
    assert "from: str = 'relu'" in out and "from_" not in out


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--quiet")
    assert code == 0 and "reloaded in a fresh process" in out


# errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "needles"), [
    (["inspect", "no_such_module:make"], ["no_such_module", "importable"]),
    (["inspect", "not-a-spec"], ["bad model spec", "package.module:callable"]),
    (["inspect", "tests.cli_models:nope"], ["no attribute 'nope'", "small_net"]),
    (["inspect", "tests.cli_models:not_a_model"], ["returned int"]),
    (["inspect", "tests.cli_models:model_only"], ["--input"]),
    (["inspect", SPEC, "--input", "2x5x32x32"], ["fails in eager mode", "--input"]),
    (["inspect", "tests.cli_models:broken"], ["fails in eager mode"]),
    (["inspect", SPEC, "--input", "big"], ["not a shape"]),
    (["rewrite", SPEC, "-p", "no-such-pass", "-o", "unused"], ["unknown pass 'no-such-pass'", *sorted(REGISTRY)]),
    (["rewrite", SPEC, "-p", "swap-activation{bad=1}", "-o", "unused"], ["no option 'bad'"]),
    (["rewrite", SPEC, "-p", "swap-activation{from=relu to=zzz}", "-o", "unused"], ["zzz"]),
    (["graph", SPEC, "--format", "jpg"], ["invalid choice", "--help"]),
    (["no-such-command"], ["invalid choice"]),
])
def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]) -> None:
    assert_one_line_error(*run(capsys, *argv), *needles)


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(SpecError):
        main(["inspect", "not-a-spec", "--debug"])


def test_render_without_graphviz_says_what_to_install(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert_one_line_error(*run(capsys, "graph", SPEC, "--format", "svg"), "install Graphviz")


# pictures with Graphviz ---------------------------------------------------------------------------

@needs_dot
def test_resnet18_picture_svg(torchvision, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "resnet18.svg"
    code, _, err = run(capsys, "graph", "torchvision:resnet18", "--input", "1x3x64x64", "-f", "svg", "-o", str(out))
    assert code == 0, err
    svg = out.read_text()
    assert "<svg" in svg and "layer4" in svg and "Block&lt;BasicBlock&gt;" in svg


@needs_dot
def test_resnet18_diff_svg(torchvision, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "diff.svg"
    code, _, err = run(capsys, "diff", "torchvision:resnet18", "--input", "1x3x64x64", "-p", "fuse-conv-bn",
                       "-f", "svg", "--depth", "2", "-o", str(out))
    assert code == 0, err
    svg = out.read_text()
    assert "<svg" in svg and "before: ResNet" in svg and "#fecaca" in svg and "#fde68a" in svg


# specs ------------------------------------------------------------------------------------------

def test_parse_shape() -> None:
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape("8") == (8,)
    with pytest.raises(SpecError, match="--input 1x3x224x224"):
        parse_shape("1x3xN")


def test_file_spec_and_dtype(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n    return nn.Embedding(16, 4)\n")
    loaded = load_spec(f"{tmp_path / 'mymodel.py'}:make", ["2x5"], "int64")
    assert isinstance(loaded.module, torch.nn.Embedding) and not loaded.module.training
    assert loaded.args[0].dtype == torch.int64 and loaded.args[0].shape == (2, 5)
    with pytest.raises(SpecError, match="not a torch dtype"):
        load_spec(f"{tmp_path / 'mymodel.py'}:make", ["2x5"], "int77")


def test_torchvision_spec(torchvision) -> None:  # noqa: ANN001
    loaded = load_spec("torchvision:resnet18")
    assert loaded.args[0].shape == (1, 3, 224, 224) and not loaded.module.training
    with pytest.raises(SpecError, match="no classification model 'resnet9000'"):
        load_spec("torchvision:resnet9000")


# progress ---------------------------------------------------------------------------------------

def test_progress_is_silent_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHGRAFT_PROGRESS", raising=False)
    stream = io.StringIO()
    assert not enabled_for(stream)
    with step("working", stream=stream) as p:
        p.update()
    assert list(track([1, 2], "items", stream=stream)) == [1, 2]
    assert stream.getvalue() == ""


def test_progress_draws_a_bar_when_enabled() -> None:
    stream = io.StringIO()
    assert list(track(range(3), "sweeping", stream=stream, enabled=True)) == [0, 1, 2]
    text = stream.getvalue()
    assert "sweeping [" in text and "3/3" in text and text.endswith("\r\x1b[K")
    stream = io.StringIO()
    with Progress("capturing", stream=stream, enabled=True, leave=True, interval=0.01):
        pass
    assert re.search(r"capturing: done in \d+\.\ds\n$", stream.getvalue())


def test_progress_forced_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHGRAFT_PROGRESS", "1")
    assert enabled_for(io.StringIO())
    monkeypatch.setenv("TORCHGRAFT_PROGRESS", "0")
    assert not enabled_for(io.StringIO())

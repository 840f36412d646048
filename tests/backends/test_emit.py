"""The torch backend: readable, standalone, deterministic source; hand-built IR emits and runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.examples.nets import example
from torchgraft.hand import build_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; TORCHGRAFT_UPDATE_GOLDEN=1 rewrites it (a missing one fails)."""
    path = GOLDEN / name
    if os.environ.get("TORCHGRAFT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden {path}: write it with TORCHGRAFT_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), (
        f"emitted source changed; review and rerun with TORCHGRAFT_UPDATE_GOLDEN=1 ({path})")


def test_resnet18_golden_source(torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.resnet18().eval()
    code = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 3, 64, 64),)))
    _golden("resnet18_model.py", code.source)


def test_mobilenet_v2_golden_source(torchvision) -> None:  # noqa: ANN001
    """Generalised classes: an optional expand layer, a conditional residual, runs of equal blocks."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    code = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 3, 64, 64),)))
    _golden("mobilenet_v2_model.py", code.source)


def test_bundled_net_golden_source() -> None:
    net, args = example()
    _golden("net_model.py", torchgraft.emit(torchgraft.capture(net, args)).source)


def test_resnet50_is_hierarchical_and_shorter_than_fx_to_folder(torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.resnet50().eval()
    source = torchgraft.emit(torchgraft.capture(model, (torch.randn(1, 3, 64, 64),))).source
    assert "getattr(self" not in source
    assert "class ResNet(nn.Module)" in source and "class Bottleneck(nn.Module)" in source
    assert "self.layer1 = nn.Sequential(" in source
    with tempfile.TemporaryDirectory() as tmp:
        torch.fx.symbolic_trace(model).to_folder(tmp, "FxResNet")
        fx_lines = sum(len(p.read_text().splitlines()) for p in Path(tmp).rglob("*.py"))
    ours = len([ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")])
    assert ours < fx_lines, (ours, fx_lines)


def test_emission_is_deterministic_and_ruff_clean(tmp_path: Path) -> None:
    net, args = example()
    m = torchgraft.capture(net, args)
    a, b = torchgraft.emit(m).source, torchgraft.emit(torchgraft.capture(net, args)).source
    assert a == b
    (tmp_path / "model.py").write_text(a)
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed")
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--isolated", str(tmp_path / "model.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_hand_built_ir_emits_and_runs(tmp_path: Path) -> None:
    net = ir.Chain(
        ir.Conv2d(3, 16, 3, padding=1), ir.BatchNorm2d(16), ir.ReLU(),
        ir.SkipConnection(ir.Chain(ir.Conv2d(16, 16, 3, padding=1), ir.ReLU()), "add"),
        ir.Parallel((ir.Conv2d(16, 8, 1), ir.Conv2d(16, 8, 3, padding=1)), ir.Combine("cat", 1)),
        ir.AdaptiveAvgPool2d(1), ir.Flatten(), ir.LinearLayer(16, 10),
    )
    model = build_model(net, ir.TensorType(("N", 3, 32, 32)))
    assert model.output_type == ir.TensorType(("N", 10))
    assert model.type_at("4") == ir.TensorType(("N", 16, 32, 32))
    code = torchgraft.emit(model)
    code.save(tmp_path)
    rebuilt = code.materialize().eval()
    x = torch.randn(3, 3, 32, 32)
    first, second = rebuilt(x), torchgraft.emit(model).materialize().eval()(x)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert first.shape == (3, 10)
    assert set(rebuilt.state_dict()) == set(model.weights)


def test_hand_built_block_with_combinator_body() -> None:
    body = ir.Chain(ir.SkipConnection(ir.Chain(ir.ChildRef("conv"), ir.ChildRef("bn")), "add"), ir.ReLU())
    block = ir.Block(ir.ClassRef("mynet", "Residual"), (("conv", ir.Conv2d(8, 8, 3, padding=1)),
                                                        ("bn", ir.BatchNorm2d(8))), body)
    model = build_model(block, ir.TensorType(("N", 8, 5, 5)), name="Residual")
    code = torchgraft.emit(model)
    assert "class Residual(nn.Module)" in code.source
    source = code.source.replace("x + self.bn(self.conv(x))", "self.bn(self.conv(x)) + x")
    assert "F.relu(self.bn(self.conv(x)) + x)" in source
    mod = code.materialize().eval()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(mod(x), torch.relu(mod.bn(mod.conv(x)) + x))


def test_ties_are_kept_when_the_root_is_a_sequential() -> None:
    """A module used twice in an ``nn.Sequential`` stays one module in the emitted ``build()``."""
    shared = nn.Linear(4, 4)
    original = nn.Sequential(shared, nn.ReLU(), shared)
    captured = torchgraft.capture(original, (torch.randn(2, 4),))
    assert captured.ties == (("2", "0"),)
    rebuilt = torchgraft.emit(captured).materialize()
    assert rebuilt[0] is rebuilt[2]
    x = torch.randn(5, 4)
    torch.testing.assert_close(rebuilt(x), original(x), rtol=1e-6, atol=1e-6)

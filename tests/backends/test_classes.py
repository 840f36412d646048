"""One class per original class, readable forwards, ruff-clean and deterministic output."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import torchgraft
from torchgraft.ir.nodes import Block, Chain
from torchgraft.ir.traverse import walk

Emitted = Callable[[str], tuple[Any, Any, Any]]
SIZES = {"vit_b_16": 224}


@pytest.fixture(scope="module")
def emitted(torchvision: Any) -> Emitted:  # noqa: ANN401
    """(original, IR, EmittedCode) for a torchvision model, captured once per module."""
    cache: dict[str, tuple[Any, Any, Any]] = {}

    def get(name: str) -> tuple[Any, Any, Any]:
        if name not in cache:
            torch.manual_seed(0)
            model = torchvision.models.get_model(name).eval()
            size = SIZES.get(name, 64)
            ir_model = torchgraft.capture(model, (torch.randn(2, 3, size, size),))
            cache[name] = (model, ir_model, torchgraft.emit(ir_model))
        return cache[name]

    return get


def classes(source: str) -> list[str]:
    return re.findall(r"^class (\w+)\(", source, re.M)


def code_lines(source: str) -> int:
    return len([ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")])


def test_resnet50_is_two_classes_in_at_most_120_lines(emitted: Emitted) -> None:
    model, _, code = emitted("resnet50")
    assert sorted(classes(code.source)) == ["Bottleneck", "ResNet"]
    assert code_lines(code.source) <= 120, code.source
    assert "downsample: bool = False" in code.source and "Bottleneck(64, 64, 256, downsample=True)" in code.source
    assert "*[Bottleneck(1024, 256, 1024) for _ in range(5)]" in code.source
    assert "identity = self.downsample(x) if self.downsample is not None else x" in code.source
    rebuilt = code.materialize().eval()
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["efficientnet_b0", "vit_b_16"])
def test_one_class_per_original_class(emitted: Emitted, name: str) -> None:
    model, ir_model, code = emitted(name)
    originals = {n.cls.name for _, n in walk(ir_model.root)
                 if isinstance(n, Block) or (isinstance(n, Chain) and n.cls is not None)}  # nn.Sequential subclasses
    assert sorted(classes(code.source)) == sorted(originals)
    rebuilt = code.materialize().eval()
    assert list(rebuilt.state_dict()) == list(model.state_dict())


def test_efficientnet_generalises_constants_and_optional_layers(emitted: Emitted) -> None:
    source = emitted("efficientnet_b0")[2].source
    assert "def __init__(self, p: float) -> None:" in source  # StochasticDepth's probability
    assert 'stochastic_depth(input, self.p, "row", self.training)' in source
    assert "if self.residual:" in source
    assert re.search(r"\]\s+if use_block_0\s+else \[\]\s+\)", source)  # the expand layer only some MBConvs have


def test_forward_names_are_not_fx_numbered(emitted: Emitted) -> None:
    for name in ("resnet50", "efficientnet_b0", "vit_b_16"):
        source = emitted(name)[2].source
        assigned = re.findall(r"^ +(\w+) = ", source, re.M)
        assert not [n for n in assigned if re.fullmatch(r"\w+_\d+", n)], (name, assigned)
        assert not {"getitem", "getattr", "add", "floordiv"} & set(assigned), (name, assigned)


def _ruff(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed")
    (tmp_path / "model.py").write_text(source)
    return subprocess.run([str(ruff), "check", "--no-cache", "--isolated", str(tmp_path / "model.py")],
                          capture_output=True, text=True, cwd=tmp_path)


def test_mobilenet_v3_large_is_ruff_clean_and_deterministic(emitted: Emitted, torchvision: Any,
                                                           tmp_path: Path) -> None:  # noqa: ANN401
    model, ir_model, code = emitted("mobilenet_v3_large")
    proc = _ruff(tmp_path, code.source)
    assert proc.returncode == 0, proc.stdout
    assert torchgraft.emit(ir_model).source == code.source
    again = torchgraft.capture(model, (torch.randn(2, 3, 64, 64),))
    assert torchgraft.emit(again).source == code.source
    assert max(len(ln) for ln in code.source.splitlines()[1:]) <= 100


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "vit_b_16"])
def test_more_emitted_models_are_ruff_clean(emitted: Emitted, name: str, tmp_path: Path) -> None:
    proc = _ruff(tmp_path, emitted(name)[2].source)
    assert proc.returncode == 0, proc.stdout

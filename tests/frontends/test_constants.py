"""Captured constants and copied helpers are faithful: the emitted model.py runs and matches eager.

numpy scalars and int/str Enum members become plain literals, inf/nan globals are written
as ``math.inf``/``math.nan``, and a copied helper brings every helper it calls (issue
"faithful or loud", items 8 and 9).
"""

from __future__ import annotations

import enum
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.frontends.helpers import HelperError, collect
from torchgraft.ir.model import Helper

TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32, same ops in the same order: only reassociation noise


class Mode(str, enum.Enum):
    PAD = "constant"


class Axis(enum.IntEnum):
    ONE = 1
    TWO = 2


EPS = float("inf")
NAN = float("nan")
NEG_INF = -math.inf
SCALE = np.float64(0.5)
PAD_MODE = Mode.PAD
FILL = Axis.TWO


@torch.fx.wrap
def _pad(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 0), mode=PAD_MODE, value=FILL)


@torch.fx.wrap
def _clamp_all(x: torch.Tensor) -> torch.Tensor:
    filled = torch.nan_to_num(x * 0 + NAN, nan=1.0)
    return torch.clamp(x, -EPS, EPS) * filled + torch.maximum(x, torch.full_like(x, NEG_INF)) * SCALE


def _innermost(x: torch.Tensor) -> torch.Tensor:
    return x * 3 - 1


@torch.fx.wrap
def _inner(x: torch.Tensor) -> torch.Tensor:
    return _innermost(x).relu() + 1


@torch.fx.wrap
def _outer(x: torch.Tensor) -> torch.Tensor:
    return _inner(x) * 2


class NumpyScale(nn.Module):
    """``x / np.sqrt(d)`` (an np.float64) and numpy int/float32 scalars, traced by fx."""

    def __init__(self) -> None:
        super().__init__()
        self.d = 16
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) / np.sqrt(self.d) * np.float32(2.0) + x.flatten(np.int64(1)).sum(-1, keepdim=True)


class NumpyAttrBranch(nn.Module):
    """A data-dependent forward (copied as source) reading a numpy scalar attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = np.float64(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * self.scale
        return x - self.scale


class EnumPad(nn.Module):
    """A str Enum passed as F.pad's mode and an IntEnum as a dim and a factor; Enum globals of a helper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 1), mode=Mode.PAD).sum(Axis.ONE) * Axis.TWO + _pad(x).sum(Axis.ONE)


class InfHelper(nn.Module):
    """Calls a copied helper that reads inf, -inf, nan and numpy globals."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _clamp_all(x)


class InfBranch(nn.Module):
    """A forward copied as source that reads an inf attribute and an inf global."""

    def __init__(self) -> None:
        super().__init__()
        self.eps = float("inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return torch.clamp(x, max=self.eps) + torch.clamp(x, min=-EPS)
        return torch.clamp(x, min=-EPS)


class TwoLevel(nn.Module):
    """Calls a wrapped helper that calls a wrapped helper that calls a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _outer(self.lin(x))


def _ruff_undefined(tmp_path: Path, source: str) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed")
    path = tmp_path / "model.py"
    path.write_text(source)
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--isolated", "--select", "F821,F841", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def _roundtrip(model: nn.Module, x: torch.Tensor, tmp_path: Path) -> str:
    """Capture at ``x``, emit, check the source with ruff and the outputs against eager; the source."""
    model.eval()
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    _ruff_undefined(tmp_path, code.source)
    rebuilt = code.materialize().eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), **TOL)
        for sign in (1.0, -1.0):  # both branches of data-dependent forwards
            y = sign * x.abs()
            torch.testing.assert_close(rebuilt(y), model(y), **TOL)
    return code.source


def _roundtrip_two_sizes(model: nn.Module, shapes: list[tuple[int, ...]], tmp_path: Path) -> str:
    sources = [_roundtrip(model, torch.randn(*s), tmp_path) for s in shapes]
    return sources[0]


def test_numpy_scalars_become_python_numbers(tmp_path: Path) -> None:
    source = _roundtrip_two_sizes(NumpyScale(), [(2, 8), (5, 8)], tmp_path)
    assert "np." not in source and "4.0" in source


def test_numpy_scalar_attribute_of_copied_forward(tmp_path: Path) -> None:
    source = _roundtrip_two_sizes(NumpyAttrBranch(), [(2, 3), (4, 7)], tmp_path)
    assert "np." not in source and "0.25" in source


def test_enum_members_become_their_values(tmp_path: Path) -> None:
    source = _roundtrip_two_sizes(EnumPad(), [(2, 3, 4), (1, 5, 6)], tmp_path)
    assert "Mode" not in source and "Axis" not in source and 'PAD_MODE = "constant"' in source
    assert "FILL = 2" in source and "def _pad(" in source
    assert "'constant'" in source or '"constant"' in source


def test_inf_nan_globals_of_a_helper(tmp_path: Path) -> None:
    source = _roundtrip_two_sizes(InfHelper(), [(2, 3), (4, 5)], tmp_path)
    assert "EPS = math.inf" in source and "NAN = math.nan" in source and "NEG_INF = -math.inf" in source
    assert "import math" in source and "SCALE = 0.5" in source


def test_inf_in_a_forward_copied_as_source(tmp_path: Path) -> None:
    source = _roundtrip_two_sizes(InfBranch(), [(2, 3), (4, 5)], tmp_path)
    assert "EPS = math.inf" in source


def test_helper_brings_the_helpers_it_calls(tmp_path: Path) -> None:
    source = _roundtrip_two_sizes(TwoLevel(), [(2, 8), (3, 8)], tmp_path)
    for name in ("_outer", "_inner", "_innermost"):
        assert f"def {name}(" in source


def _closure_fn() -> object:
    k = 2

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * k
    return scaled


_scaled = _closure_fn()


def _calls_closure(x: torch.Tensor) -> torch.Tensor:
    return _innermost(_scaled(x))  # type: ignore[operator]


def test_a_refused_helper_adds_nothing() -> None:
    out: dict[str, Helper] = {}
    with pytest.raises(HelperError, match="closure"):
        collect(_calls_closure, out)
    assert out == {}  # neither _calls_closure nor _innermost: no half-copied helper is left


def test_swin3d_t_copies_its_attention_mask_helper(tmp_path: Path, torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.video.swin3d_t().eval()
    source = _roundtrip(model, torch.randn(1, 3, 4, 32, 32), tmp_path)
    assert "def _compute_attention_mask_3d(" in source


def test_helpers_carry_their_kind_not_a_name_prefix() -> None:
    """An import, a constant and a function are told apart by ``Helper.kind``; names are bare; JSON written
    before kinds (``"import:math"``) still reads as an import named ``math``."""
    from torchgraft.ir import HelperKind
    from torchgraft.ir.serialize import from_json, to_json

    captured = torchgraft.capture(InfHelper(), (torch.randn(2, 3),))
    kinds = {(h.kind, h.name) for h in captured.helpers}
    assert {(HelperKind.IMPORT, "math"), (HelperKind.CONSTANT, "EPS"), (HelperKind.CONSTANT, "SCALE")} <= kinds
    assert all(":" not in h.name for h in captured.helpers)
    assert any(k is HelperKind.FUNCTION for k, _ in kinds)
    assert from_json(to_json(captured)).helpers == captured.helpers
    legacy = Helper("import:math", "import math\n", "")
    assert (legacy.kind, legacy.name, legacy.key) == (HelperKind.IMPORT, "math", "import:math")
    assert Helper("const:EPS", "EPS = 1.0\n", "m").kind is HelperKind.CONSTANT

"""Reparametrized layers (issue 10, family 2): ``torch.nn.utils.parametrizations.weight_norm``,
``spectral_norm``, ``orthogonal`` and the legacy hook-based ``torch.nn.utils.weight_norm`` /
``spectral_norm``.

Each layer stays its primitive with the reparametrization recorded; the emitted ``model.py``
registers the same one, so the original state_dict (``parametrizations.weight.original0``,
spectral norm's ``_u``/``_v``, ``weight_g``/``weight_v``) loads strict=True in a fresh process
where torchgraft cannot be imported, and outputs match in eval and in train mode (spectral norm's
power iteration included), at the example's batch size and another. Passes that would rewrite a
reparametrized weight skip it with a reason (fuse-conv-bn) or carry it along (LoRA). A user-defined
parametrization, or one on a module that is not a torch.nn layer, is refused with a CaptureError.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from frontends.fresh import reference, run_emitted
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.nn.utils import parametrize

import torchgraft
from torchgraft.errors import CaptureError
from torchgraft.ir.primitives import Conv, Linear
from torchgraft.ir.serialize import from_json, to_json
from torchgraft.ir.verify import verify

TOL = {"rtol": 1e-5, "atol": 1e-5}  # float32, same ops in the same order


def _legacy(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - deprecated torch API, warnings muted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args, **kwargs)


class Reparametrized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = P.weight_norm(nn.Linear(6, 8))
        self.b = P.spectral_norm(nn.Conv1d(8, 8, 3, padding=1), n_power_iterations=2, eps=1e-6)
        self.c = P.orthogonal(nn.Linear(8, 8))
        self.d = P.orthogonal(nn.Linear(8, 5), orthogonal_map="cayley")
        self.e = P.orthogonal(nn.Linear(5, 7), orthogonal_map="householder", use_trivialization=False)
        self.f = _legacy(nn.utils.weight_norm, nn.Linear(7, 6), dim=None)
        self.g = _legacy(nn.utils.spectral_norm, nn.Linear(6, 6))
        self.seq = nn.Sequential(P.weight_norm(nn.Linear(6, 4), dim=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(self.a(x).unsqueeze(-1)).squeeze(-1)
        return self.seq(self.g(self.f(self.e(self.d(self.c(h))))))


def test_reparametrized_layers_round_trip(tmp_path: Path) -> None:
    model = Reparametrized().eval()
    x = torch.randn(2, 6)
    captured = torchgraft.capture(model, (x,))
    verify(captured)
    nodes = dict(captured.root.children)  # type: ignore[union-attr]
    assert isinstance(nodes["a"], Linear) and [r.kind for r in nodes["a"].reparam] == ["weight_norm"]
    assert isinstance(nodes["b"], Conv) and dict(nodes["b"].reparam[0].options)["n_power_iterations"] == 2
    assert [r.kind for r in nodes["g"].reparam] == ["legacy_spectral_norm"]  # type: ignore[union-attr]
    code = torchgraft.emit(captured)
    assert "nn.utils.parametrizations.weight_norm(" in code.source
    assert 'orthogonal_map="householder"' in code.source and "use_trivialization=False" in code.source
    assert "nn.utils.weight_norm(" in code.source and "nn.utils.spectral_norm(" in code.source

    emitted = code.materialize()
    assert list(emitted.state_dict()) == list(model.state_dict())
    emitted.load_state_dict(model.state_dict(), strict=True)

    code.save(tmp_path)
    inputs = {"example": x, "other_batch": torch.randn(5, 6)}
    expected = reference(model, inputs, train=True)
    got, _ = run_emitted(tmp_path, inputs, train=True, original=model.state_dict())
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **TOL, msg=key)


def test_reparam_survives_json_round_trip() -> None:
    model = nn.Sequential(P.spectral_norm(nn.Linear(4, 4)), P.orthogonal(nn.Linear(4, 4)))
    captured = torchgraft.capture(model.eval(), (torch.randn(2, 4),))
    again = from_json(to_json(captured))
    assert again.root == captured.root
    assert again.root.items[1].reparam == captured.root.items[1].reparam  # type: ignore[union-attr]


def test_capture_leaves_the_model_alone() -> None:
    model = Reparametrized().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torchgraft.capture(model, (torch.randn(3, 6),))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # spectral norm's _u/_v too


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = P.weight_norm(nn.Conv2d(3, 4, 3))
        self.bn = nn.BatchNorm2d(4)
        self.fc = P.weight_norm(nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_fuse_conv_bn_skips_a_reparametrized_conv() -> None:
    model = ConvBN().eval()
    model.bn.running_mean.uniform_(-1, 1)
    captured = torchgraft.capture(model, (torch.randn(2, 3, 8, 8),))
    result = torchgraft.passes.run(captured, "fuse-conv-bn")
    report = result.reports[0]
    assert not report.matches
    assert [s.path for s in report.skipped] == ["bn"]
    assert "conv is reparametrized (weight_norm" in report.skipped[0].reason
    assert result.model.root == captured.root


def test_lora_keeps_the_parametrization(tmp_path: Path) -> None:
    model = ConvBN().eval()
    x = torch.randn(2, 3, 8, 8)
    captured = torchgraft.capture(model, (x,))
    result = torchgraft.passes.run(captured, "lora{where=fc r=2}")
    verify(result.model)
    renamed = result.reports[0].keys_renamed
    assert renamed["fc.parametrizations.weight.original0"] == "fc.base.parametrizations.weight.original0"
    base = dict(dict(result.model.root.children)["fc"].children)["base"]  # type: ignore[union-attr]
    assert isinstance(base, Linear) and base.reparam == dict(captured.root.children)["fc"].reparam  # type: ignore[union-attr]
    code = torchgraft.emit(result.model)
    code.save(tmp_path)
    got, _ = run_emitted(tmp_path, {"x": x})
    torch.testing.assert_close(got["eval.x"], model(x), **TOL)  # lora_B starts at zero


class Doubled(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_user_parametrization_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    parametrize.register_parametrization(model[1], "weight", Doubled())
    with pytest.raises(CaptureError, match=r"(?s)^1 \(ParametrizedLinear\): its 'weight' is parametrized by "
                                           r".*Doubled.*remove_parametrizations") as info:
        torchgraft.capture(model, (torch.randn(2, 4),))
    assert info.value.path == "1"


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_parametrized_user_module_is_refused() -> None:
    model = nn.Sequential(P.weight_norm(Scaled()))
    with pytest.raises(CaptureError, match=r"(?s)^0 \(ParametrizedScaled\) is reparametrized \(weight_norm.*"
                                           r"only on torch.nn layers.*remove_parametrizations"):
        torchgraft.capture(model, (torch.randn(2, 4),))

"""torchgraft.check: eval/train equivalence, output structures, first diverging module."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.check import CheckReport, check, flatten, tensor_diff


class Block(nn.Module):
    """conv -> bn -> relu with dropout in train mode."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.bn(self.conv(x))))


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 1), *[Block(8) for _ in range(3)], nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 4, 4)


class DictOut(nn.Module):
    """Returns a dict holding a tensor, a tuple of tensors, and a non-tensor leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> dict[str, Any]:
        return {"logits": self.a(x) * scale, "pair": (self.b(x), x.sum()), "n": 7}


def test_identical_copies_pass_in_both_modes_and_originals_untouched() -> None:
    net = _net()
    twin = copy.deepcopy(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = check(net, twin, (_x(),))
    assert report.ok, str(report)
    assert {r.mode for r in report.results} == {"eval", "train"}
    assert report.first_divergence == {"eval": None, "train": None}
    assert net.training and twin.training  # modes of the originals unchanged
    for key, value in net.state_dict().items():  # BN running stats, num_batches_tracked
        assert torch.equal(value, before[key]), key
    report.raise_if_failed()


def test_train_mode_dropout_matters() -> None:
    """Same weights, different dropout rate: eval matches, train does not."""
    net = _net()
    other = copy.deepcopy(net)
    other[2].drop.p = 0.1
    report = check(net, other, (_x(),))
    assert all(r.ok for r in report.results if r.mode == "eval")
    assert not all(r.ok for r in report.results if r.mode == "train")
    assert report.first_divergence["train"] == "2.drop"


def test_caller_rng_state_preserved() -> None:
    net, twin, x = _net(), _net(), _x()
    state = torch.get_rng_state()
    check(net, twin, (x,), seed=123)
    assert torch.equal(torch.get_rng_state(), state)


def test_perturbed_deep_layer_is_first_divergence() -> None:
    net = _net()
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad[2].conv.weight.add_(0.1)
    report = check(net, bad, (_x(),))
    assert not report.ok
    assert report.first_divergence == {"eval": "2.conv", "train": "2.conv"}
    text = str(report)
    assert "FAILED" in text and "first divergence (eval): 2.conv" in text
    with pytest.raises(AssertionError, match="2.conv"):
        report.raise_if_failed()


def test_inplace_relu_does_not_hide_divergence() -> None:
    """The bn output is overwritten by an in-place ReLU; the recorded copy must not be."""
    ref = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand[0].bias.add_(1.0)
    report = check(ref, cand, (torch.randn(3, 4),), modes=("eval",))
    assert report.first_divergence == {"eval": "0"}


def test_tolerance_options() -> None:
    ref = nn.Linear(4, 3)
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand.bias.add_(1e-3)
    x = (torch.randn(2, 4),)
    assert not check(ref, cand, x).ok
    assert check(ref, cand, x, atol=1e-2).ok
    assert check(ref, cand, x, rtol=1.0).ok


def test_dict_and_tuple_outputs_with_kwargs() -> None:
    ref = DictOut()
    report = check(ref, copy.deepcopy(ref), (torch.randn(2, 4),), {"scale": 2.0}, modes=("eval",))
    assert report.ok, str(report)
    assert [r.path for r in report.results] == ["out['logits']", "out['pair'][0]", "out['pair'][1]", "out['n']"]
    assert report.results[0].ref_shape == (2, 3) and report.results[2].ref_shape == ()
    bad = copy.deepcopy(ref)
    with torch.no_grad():
        bad.b.weight.mul_(2)
    report = check(ref, bad, (torch.randn(2, 4),), {"scale": 2.0}, modes=("eval",))
    failed = [r.path for r in report.results if not r.ok]
    assert failed == ["out['pair'][0]"]
    assert report.first_divergence["eval"] == "b"


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x * 2


class Single(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Wide(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, torch.cat([x, x]) * 2


def test_structure_mismatch_reported_clearly() -> None:
    x = (torch.randn(2, 3),)
    report = check(Pair(), Single(), x, modes=("eval",))
    assert not report.ok
    notes = {r.path: r.note for r in report.results}
    assert notes == {"out[0]": "missing in candidate", "out[1]": "missing in candidate", "out": "only in candidate"}
    assert "missing in candidate" in str(report)
    shapes = check(Pair(), Wide(), x, modes=("eval",))
    (bad,) = shapes.failures()
    assert (bad.path, bad.ref_shape, bad.cand_shape, bad.note) == ("out[1]", (2, 3), (4, 3), "shapes differ")
    assert math.isnan(bad.max_abs)
    assert "[2, 3]" in str(shapes) and "[4, 3]" in str(shapes)


def test_flatten_ordered_dict_and_dataclass() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Out:
        loss: torch.Tensor
        extra: list[torch.Tensor]

    class ModelOutput(OrderedDict):
        """Like transformers' ModelOutput: an OrderedDict subclass, read as a mapping."""

    t = torch.zeros(1)
    assert [p for p, _ in flatten(OrderedDict(a=t, b=[t, None]))] == ["out['a']", "out['b'][0]", "out['b'][1]"]
    assert [p for p, _ in flatten(Out(t, [t]))] == ["out.loss", "out.extra[0]"]
    assert [p for p, _ in flatten(ModelOutput(logits=t, hidden=(t,)))] == ["out['logits']", "out['hidden'][0]"]


def test_tensor_diff_nan_and_inf() -> None:
    nan, inf = float("nan"), float("inf")
    assert tensor_diff(torch.tensor([nan, inf, 1.0]), torch.tensor([nan, inf, 1.0])) == (0.0, 1.0)
    assert tensor_diff(torch.tensor([nan, 2.0]), torch.tensor([1.0, 2.0]))[0] == inf
    assert tensor_diff(torch.tensor([1, 5]), torch.tensor([1, 2])) == (3.0, 5.0)


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        check(nn.Identity(), nn.Identity(), (torch.zeros(1),), modes=("evaluation",))


def test_report_type() -> None:
    report = check(nn.Identity(), nn.Identity(), (torch.zeros(1),))
    assert isinstance(report, CheckReport) and report.ok
    assert str(report).startswith("check: ok")


def test_resnet18_roundtrip_matches(torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rebuilt = torchgraft.emit(torchgraft.capture(model, (x,))).materialize()
    report = check(model, rebuilt, (x,))
    report.raise_if_failed()
    assert {r.mode for r in report.results} == {"eval", "train"}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_resnet18_perturbed_layer_named(torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.resnet18(num_classes=10).eval()
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.layer2[1].conv1.weight.mul_(1.01)
    report = check(model, bad, (torch.randn(1, 3, 32, 32),), modes=("eval",))
    assert report.first_divergence == {"eval": "layer2.1.conv1"}

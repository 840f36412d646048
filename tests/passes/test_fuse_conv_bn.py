"""``fuse-conv-bn``: every conv kind, Linear + BatchNorm1d, functional ``F.batch_norm``, refusals.

Every case compares the emitted model against the original in eval mode within
1e-5 x max|output|, and runs ``ir.verify`` on the rewritten IR.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.fx.experimental.optimization
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.ir.nodes import Block
from torchgraft.ir.primitives import BatchNorm
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify
from torchgraft.passes import run
from torchgraft.passes.fuse_conv_bn import FuseConvBN, FuseError


def _randomize_bn(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(out, ref, atol=rel * float(ref.abs().max()), rtol=0)


def _bn_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _fuse(net: nn.Module, x: torch.Tensor, pipeline: Any = "fuse-conv-bn"
          ) -> tuple[torchgraft.passes.PassResult, nn.Module]:
    """Capture, fuse, verify, emit; check the emitted model equals the original (eval)."""
    model = torchgraft.capture(net, (x,))
    verify(model)
    result = run(model, pipeline)
    verify(result.model)
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        _close(emitted(x), net(x))
    return result, emitted


# --------------------------------------------------------------------------- module pairs


class Stem(nn.Module):
    """conv -> bn called in a forward (a Block, not a Sequential)."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


CASES = {
    "conv1d": (lambda: (nn.Conv1d(4, 6, 3, bias=False), nn.BatchNorm1d(6)), (2, 4, 10)),
    "conv1d-bias": (lambda: (nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)), (2, 4, 10)),
    "conv2d": (lambda: (nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)), (2, 3, 9, 9)),
    "conv2d-groups": (lambda: (nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8)), (2, 4, 9, 9)),
    "conv3d": (lambda: (nn.Conv3d(2, 4, 3, bias=False), nn.BatchNorm3d(4)), (2, 2, 5, 6, 6)),
    "convtranspose2d-groups2": (lambda: (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)),
                                (2, 4, 5, 5)),
    "convtranspose2d-groups2-nobias": (
        lambda: (nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6)), (2, 4, 5, 5)),
    "convtranspose1d": (lambda: (nn.ConvTranspose1d(3, 5, 4, stride=2), nn.BatchNorm1d(5)), (2, 3, 7)),
    "linear-bn1d": (lambda: (nn.Linear(7, 5), nn.BatchNorm1d(5)), (6, 7)),
    "linear-bn1d-nobias": (lambda: (nn.Linear(7, 5, bias=False), nn.BatchNorm1d(5)), (6, 7)),
    "bn-not-affine": (lambda: (nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False)), (2, 3, 5, 5)),
}


@pytest.mark.parametrize("container", ["sequential", "block"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_model_equals_original(case: str, container: str) -> None:
    make, shape = CASES[case]
    conv, bn = make()
    net = _randomize_bn(nn.Sequential(conv, bn, nn.ReLU()) if container == "sequential" else Stem(conv, bn))
    result, emitted = _fuse(net, torch.randn(*shape))
    rep = result.reports[0]
    conv_path = "0" if container == "sequential" else "conv"
    bn_path = "1" if container == "sequential" else "bn"
    assert [m.path for m in rep.matches] == [conv_path]
    assert _bn_count(emitted) == 0
    bn_keys = {f"{bn_path}.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
    if bn.affine:
        bn_keys |= {f"{bn_path}.weight", f"{bn_path}.bias"}
    assert set(rep.keys_removed) == bn_keys
    assert rep.keys_added == ([] if conv.bias is not None else [f"{conv_path}.bias"])
    assert not rep.keys_renamed
    assert set(emitted.state_dict()) == (set(net.state_dict()) - bn_keys) | {f"{conv_path}.bias"}
    if container == "sequential":
        assert isinstance(emitted[1], nn.Identity)  # later indices keep their keys


def test_linear_bn1d_on_3d_input_is_not_fused() -> None:
    # BatchNorm1d over (N, C, L) normalises dim 1, not the Linear's output features
    net = _randomize_bn(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(4)))
    result, emitted = _fuse(net, torch.randn(2, 4, 5))
    assert not result.reports[0].matches and _bn_count(emitted) == 1


class TwoUsers(nn.Module):
    """The conv's output feeds the BatchNorm and something else: folding would change the other use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y.mean(dim=1, keepdim=True)


class TwoUsersFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("running_mean", torch.rand(4))
        self.register_buffer("running_var", torch.rand(4) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.batch_norm(y, self.running_mean, self.running_var, None, None, False, 0.1, 1e-5) * y


@pytest.mark.parametrize("cls", [TwoUsers, TwoUsersFunctional])
def test_conv_with_two_users_is_not_fused(cls: type[nn.Module]) -> None:
    net = _randomize_bn(cls())
    result, _ = _fuse(net, torch.randn(2, 3, 6, 6))
    rep = result.reports[0]
    assert not rep.matches and not rep.keys_removed and not rep.keys_added
    assert result.model is not None


class TrainBranch(nn.Module):
    """A forward that differs in training mode (two bodies): the pair is folded in both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.training:
            y = y * 2
        return y


def test_block_with_a_training_body() -> None:
    net = _randomize_bn(TrainBranch())
    model = torchgraft.capture(net, (torch.randn(2, 3, 6, 6),))
    assert isinstance(model.root, Block) and model.root.train_body is not None
    result, emitted = _fuse(net, torch.randn(2, 3, 6, 6))
    assert [m.path for m in result.reports[0].matches] == ["conv"]
    assert _bn_count(emitted) == 0


def test_no_running_statistics_is_a_clear_error() -> None:
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    model = torchgraft.capture(net, (x,))
    with pytest.raises(FuseError, match=r"BatchNorm2d at 1\.1 \(after Conv2d 1\.0\).*track_running_stats=False"):
        run(model, "fuse-conv-bn")
    # the message's way out works: leave that conv out with where=~<path>
    result = run(model, "fuse-conv-bn{where=~1.0}")
    assert [m.path for m in result.reports[0].matches] == ["0.0"]
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        _close(emitted(x), net(x))


class Shared(nn.Module):
    """One conv+bn Sequential reachable under two names: folding it would change both uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_shared_layers_are_left_alone() -> None:
    net = _randomize_bn(Shared())
    result, emitted = _fuse(net, torch.randn(2, 4, 5, 5))
    assert not result.reports[0].matches and _bn_count(emitted) == 1


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Stem(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.second = nn.Sequential(nn.Conv1d(4, 4, 1), nn.BatchNorm1d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x).flatten(2))


@pytest.mark.parametrize("where, fused", [
    (None, ["first.conv", "second.0"]),
    ("first.*", ["first.conv"]),
    ("in:Stem", ["first.conv"]),
    ("~in:Stem", ["second.0"]),
    ("kind:Conv1d", ["second.0"]),
    ("kind:Linear", []),
])
def test_where(where: str | None, fused: list[str]) -> None:
    net = _randomize_bn(Two())
    result, emitted = _fuse(net, torch.randn(2, 3, 6, 6), [FuseConvBN(where=where)])
    assert sorted(m.path for m in result.reports[0].matches) == fused
    assert _bn_count(emitted) == 2 - len(fused)


# --------------------------------------------------------------------------- functional F.batch_norm


class FunctionalBN(nn.Module):
    """A block holding BatchNorm state itself and calling ``F.batch_norm`` on its conv's output."""

    def __init__(self, conv: nn.Module, training: str = "self", affine: str = "both") -> None:
        super().__init__()
        self.conv = conv
        n = conv.out_channels if isinstance(conv, nn.modules.conv._ConvNd) else conv.out_features
        self.training_arg = training
        self.affine = affine
        self.weight = nn.Parameter(torch.rand(n) + 0.5)
        self.bias = nn.Parameter(torch.rand(n) - 0.5)
        self.register_buffer("running_mean", torch.rand(n) - 0.5)
        self.register_buffer("running_var", torch.rand(n) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        w = self.weight if self.affine in ("both", "weight") else None
        b = self.bias if self.affine == "both" else None
        training = self.training if self.training_arg == "self" else False
        return F.relu(F.batch_norm(y, self.running_mean, self.running_var, w, b, training, 0.1, 1e-3))


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv2d(3, 6, 3, bias=False), (2, 3, 7, 7)),
    (nn.Conv1d(3, 6, 3), (2, 3, 7)),
    (nn.ConvTranspose2d(4, 6, 3, groups=2), (2, 4, 5, 5)),
    (nn.Linear(5, 6), (4, 5)),
])
@pytest.mark.parametrize("training", ["self", "false"])
def test_functional_batch_norm_is_folded(conv: nn.Module, shape: tuple[int, ...], training: str) -> None:
    net = FunctionalBN(copy.deepcopy(conv), training).eval()
    result, emitted = _fuse(net, torch.randn(*shape))
    rep = result.reports[0]
    assert [(m.path, m.spelling) for m in rep.matches] == [("conv", "functional")]
    assert ("training=self.training" in rep.matches[0].what) == (training == "self")
    assert bool(rep.notes) == (training == "self")  # folding a self.training site is said out loud
    assert set(rep.keys_removed) == {"weight", "bias", "running_mean", "running_var"}
    assert set(emitted.state_dict()) == {"conv.weight", "conv.bias"}
    new = result.model.root
    assert isinstance(new, Block) and not new.state
    assert "batch_norm" not in torchgraft.emit(result.model).source


@pytest.mark.parametrize("affine", ["weight", "none"])
def test_functional_batch_norm_without_affine(affine: str) -> None:
    net = FunctionalBN(nn.Conv2d(3, 4, 3), "false", affine).eval()
    result, emitted = _fuse(net, torch.randn(2, 3, 6, 6))
    unused = {"weight": {"bias"}, "none": {"weight", "bias"}}[affine]
    assert set(result.reports[0].keys_removed) == {"running_mean", "running_var"} | ({"weight"} - unused)
    assert set(emitted.state_dict()) == {"conv.weight", "conv.bias"} | unused  # unused parameters stay


class BatchStats(nn.Module):
    """``training=True``: always batch statistics, nothing to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("running_mean", torch.zeros(4))
        self.register_buffer("running_var", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(self.conv(x), self.running_mean, self.running_var, training=True)


def test_functional_batch_norm_with_batch_statistics_is_left_alone() -> None:
    net = BatchStats().eval()
    model = torchgraft.capture(net, (torch.randn(2, 3, 6, 6),))
    result = run(model, "fuse-conv-bn")
    assert not result.reports[0].matches and result.model is model


# --------------------------------------------------------------------------- resnet18


def test_resnet18_fuses_at_least_as_much_as_fx(torchvision: Any) -> None:
    torch.manual_seed(0)
    net = _randomize_bn(torchvision.models.resnet18())
    x = torch.randn(1, 3, 64, 64)
    fx_fused = torch.fx.experimental.optimization.fuse(copy.deepcopy(net))
    result, emitted = _fuse(net, x)
    rep = result.reports[0]
    assert _bn_count(emitted) <= _bn_count(fx_fused)
    assert _bn_count(emitted) == 0 and len(rep.matches) == 20
    assert not any(isinstance(n, BatchNorm) for _, n in walk(result.model.root))
    assert {"bn1.running_mean", "layer1.0.bn2.weight", "layer4.1.bn2.num_batches_tracked",
            "layer2.0.downsample.1.running_var"} <= set(rep.keys_removed)
    assert len(rep.keys_removed) == 20 * 5
    assert {"conv1.bias", "layer1.0.conv1.bias", "layer2.0.downsample.0.bias"} <= set(rep.keys_added)
    assert len(rep.keys_added) == 20  # every resnet conv is bias-free
    # each BatchNorm's weight and bias (2 x C) go, each conv gains a bias (C)
    assert rep.params_before - rep.params_after == sum(
        m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        _close(emitted(x), fx_fused(x))

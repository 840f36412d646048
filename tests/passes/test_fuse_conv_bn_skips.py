"""``fuse-conv-bn`` reports every BatchNorm it left alone, with the reason (``PassReport.skipped``), and
folds a BatchNorm into the conv that ends an inner ``nn.Sequential`` (torchvision's ``Conv2Plus1D``)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.passes import run


class Subclassed(nn.Conv2d):
    """A conv subclass with a forward of its own: a Block, so the BatchNorm after it cannot fold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class InitOnly(nn.Conv2d):
    """A conv subclass that only changes ``__init__`` (and adds a staticmethod): the conv itself."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding=1, bias=False)

    @staticmethod
    def stride_of(s: int) -> tuple[int, int]:
        return s, s


class TwoUsers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class AfterAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.act(self.conv(x)))


class BatchStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("running_mean", torch.zeros(4))
        self.register_buffer("running_var", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(self.conv(x), self.running_mean, self.running_var, training=True)


X = torch.randn(2, 3, 6, 6)
Case = tuple[Callable[[], nn.Module], torch.Tensor, str, dict[str, str]]
CASES: dict[str, Case] = {
    "first": (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)), X, "fuse-conv-bn",
              {"0": r"first layer of nn\.Sequential <root>"}),
    "after_block": (lambda: nn.Sequential(Subclassed(3, 4, 1), nn.BatchNorm2d(4)), X, "fuse-conv-bn",
                    {"1": r"comes from 0 \(Block<Subclassed>\)"}),
    "two_users": (TwoUsers, X, "fuse-conv-bn", {"bn": r"output of conv is also used by"}),
    "after_act": (AfterAct, X, "fuse-conv-bn", {"bn": r"comes from act \(ReLU\), not from a Conv/Linear"}),
    "linear_3d": (lambda: nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(4)), torch.randn(2, 4, 5), "fuse-conv-bn",
                  {"1": r"Linear \+ BatchNorm1d folds only on 2-D activations"}),
    "where": (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), X, "fuse-conv-bn{where=kind:Linear}",
              {"1": r"0 is not selected by where="}),
    "functional": (BatchStats, X, "fuse-conv-bn", {"batch_norm": r"F\.batch_norm: training=True"}),
    "init_only": (lambda: nn.Sequential(InitOnly(3, 4), nn.BatchNorm2d(4)), X, "fuse-conv-bn", {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_skipped_batch_norms_are_reported_with_a_reason(name: str) -> None:
    build, x, pipeline, expected = CASES[name]
    torch.manual_seed(0)
    report = run(torchgraft.capture(build().eval(), (x,)), pipeline).reports[0]
    got = {s.path: s.reason for s in report.skipped}
    assert set(got) == set(expected), report
    for path, pattern in expected.items():
        assert re.search(pattern, got[path]), (path, got[path])
        assert f"skipped {path}: {got[path]}" in str(report)
    if not expected:  # nothing skipped: the subclass that only changes __init__ is the conv itself
        assert len(report.matches) == 1


def test_a_pass_without_skips_reports_none() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    result = run(torchgraft.capture(net, (X,)), "swap-activation{from=relu to=silu}")
    assert result.reports[0].skipped == []


class Factored(nn.Sequential):
    """Like torchvision's ``Conv2Plus1D``: an ``nn.Sequential`` subclass ending in a conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv3d(cin, 4, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(4),
                         nn.ReLU(), nn.Conv3d(4, cout, (3, 1, 1), padding=(1, 0, 0), bias=False))


class FactoredBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = Factored(3, 5)
        self.bn = nn.BatchNorm3d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("build", [lambda: nn.Sequential(Factored(3, 5), nn.BatchNorm3d(5), nn.ReLU()),
                                   FactoredBlock])
def test_batch_norm_after_an_inner_sequential_folds_into_its_last_conv(build: Callable[[], nn.Module]) -> None:
    net = build().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 4, 6, 6)
    result = run(torchgraft.capture(net, (x,)), "fuse-conv-bn")
    report = result.reports[0]
    outer = "0.3" if isinstance(net, nn.Sequential) else "conv.3"
    assert sorted(m.path for m in report.matches) == sorted([outer, outer[:-1] + "0"]) and not report.skipped
    emitted = torchgraft.emit(result.model).materialize().eval()
    assert not any(isinstance(m, nn.BatchNorm3d) for m in emitted.modules())
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), net(x), atol=1e-5, rtol=0)

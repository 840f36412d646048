"""Layer subclasses that only change ``__init__`` are their torch.nn layer; pooling with tuple arguments.

torchvision's ``Conv3DSimple(nn.Conv3d)`` has its own ``__init__`` and a staticmethod, but the forward of
``nn.Conv3d``: it is captured (and emitted) as ``nn.Conv3d`` with the arguments its ``__init__`` passed,
so ``fuse-conv-bn`` sees every conv/BatchNorm pair of ``r3d_18``. ``nn.MaxPool3d((1, 2, 2), ...)`` keeps
its tuple arguments (``padding=(0, 0, 0)`` is not ``padding=0`` to the layer) instead of staying opaque.
Round trips reload in a fresh process with ``import torchgraft`` blocked and load the state strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from zoo import run_fresh

import torchgraft
from torchgraft import ir
from torchgraft.passes import run


class InitOnlyConv(nn.Conv3d):
    """Only ``__init__`` and a staticmethod: behaves exactly as ``nn.Conv3d``."""

    def __init__(self, planes: int, stride: int = 1) -> None:
        super().__init__(planes, planes, kernel_size=(3, 3, 3), stride=stride, padding=1, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class ConvForward(nn.Conv3d):
    """Overrides ``_conv_forward``: not the layer any more (a Block)."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(x, weight * 2, bias)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(InitOnlyConv(3), nn.BatchNorm3d(3), nn.ReLU())
        self.pool = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2), padding=(0, 0, 0))
        self.b = ConvForward(3, 4, 1)
        self.avg = nn.AvgPool3d((1, 2, 2), stride=(1, 1, 1), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avg(self.b(self.pool(self.a(x))))


def test_init_only_subclass_is_the_primitive_and_round_trips(tmp_path: Path) -> None:
    net = Net().eval()
    x = torch.randn(2, 3, 4, 8, 8)
    model = torchgraft.capture(net, (x,))
    nodes = dict(ir.walk(model.root))
    assert isinstance(nodes["a.0"], ir.Conv) and nodes["a.0"].op == "Conv3d"
    assert "InitOnlyConv only changes __init__" in model.report.reasons["a.0"]
    assert isinstance(nodes["b"], ir.Block)  # its _conv_forward is its own
    assert isinstance(nodes["pool"], ir.TorchLayer) and isinstance(nodes["avg"], ir.TorchLayer)
    assert not model.report.opaque
    code = torchgraft.emit(model)
    flat = " ".join(code.source.split()).replace("( ", "(").replace(" )", ")")
    assert "nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2), padding=(0, 0, 0))" in flat
    built = code.materialize(load_weights=False)
    built.load_state_dict(net.state_dict(), strict=True)
    assert (built.pool.padding, built.avg.padding) == (net.pool.padding, net.avg.padding)
    code.save(tmp_path)
    inputs = {"a": x, "b": torch.randn(3, 3, 2, 6, 10)}
    outs = run_fresh(tmp_path, inputs)
    with torch.no_grad():
        for key, inp in inputs.items():
            torch.testing.assert_close(outs[key], net(inp), atol=1e-5, rtol=0)


def _randomize_bn(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.slow  # about 10 s: two r3d_18 runs in a fresh process
def test_r3d_18_folds_every_batch_norm(torchvision: Any, tmp_path: Path) -> None:
    net = _randomize_bn(torchvision.models.video.r3d_18(weights=None))
    x = torch.randn(1, 3, 4, 32, 32)
    bns = sum(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    model = torchgraft.capture(net, (x,))
    assert not model.report.opaque
    result = run(model, "fuse-conv-bn")
    report = result.reports[0]
    assert bns == 20 and len(report.matches) == bns and not report.skipped, str(report)
    code = torchgraft.emit(result.model)
    assert "BatchNorm3d" not in code.source and "Conv3DSimple" not in code.source
    code.save(tmp_path)
    inputs = {"a": x, "b": torch.randn(2, 3, 6, 24, 24)}
    outs = run_fresh(tmp_path, inputs)
    with torch.no_grad():
        for key, inp in inputs.items():
            torch.testing.assert_close(outs[key], net(inp), atol=1e-4, rtol=0)


def test_r3d_18_unfused_round_trip_loads_strict(torchvision: Any) -> None:
    net = torchvision.models.video.r3d_18(weights=None).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    built = torchgraft.emit(torchgraft.capture(net, (x,))).materialize(load_weights=False).eval()
    built.load_state_dict(net.state_dict(), strict=True)
    assert list(built.state_dict()) == list(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(built(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [
    nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2)),
    nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0)),
    nn.MaxPool3d(3, stride=(1, 2, 2), padding=(1, 1, 1), dilation=(1, 1, 1)),
    nn.MaxPool2d((2, 2), padding=(0, 0)),
    nn.AvgPool2d((3, 3), stride=(1, 1), padding=(1, 1)),
])
def test_pooling_with_tuple_arguments_is_a_primitive(layer: nn.Module) -> None:
    net = nn.Sequential(layer).eval()
    x = torch.randn(2, 3, 4, 8, 8) if "3d" in type(layer).__name__ else torch.randn(2, 3, 8, 8)
    model = torchgraft.capture(net, (x,))
    assert not model.report.opaque and isinstance(model.root.items[0], ir.TorchLayer)  # type: ignore[union-attr]
    built = torchgraft.emit(model).materialize()
    assert built[0].extra_repr() == layer.extra_repr()
    torch.testing.assert_close(built(x), net(x))

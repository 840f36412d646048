"""Constructors that read like torch for building IR by hand: ``Conv2d(3, 16, 3, padding=1)``."""

from __future__ import annotations

from typing import Any

from torchgraft.ir.activations import ActKind
from torchgraft.ir.primitives import Activation, BatchNorm, Conv, Primitive, TorchLayer
from torchgraft.ir.primitives import Dropout as _Dropout
from torchgraft.ir.primitives import Linear as _Linear


def _pair(v: Any, n: int) -> Any:
    return v if isinstance(v, (tuple, str)) else (v,) * n


def _conv(op: str, n: int, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
          padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
          padding_mode: str = "zeros") -> Conv:
    return Conv(op, in_channels, out_channels, _pair(kernel_size, n), _pair(stride, n), _pair(padding, n),
                (0,) * n, _pair(dilation, n), groups, bias, padding_mode)


def Conv1d(in_channels: int, out_channels: int, kernel_size: Any, **kw: Any) -> Conv:
    """IR for ``nn.Conv1d`` with the same arguments."""
    return _conv("Conv1d", 1, in_channels, out_channels, kernel_size, **kw)


def Conv2d(in_channels: int, out_channels: int, kernel_size: Any, **kw: Any) -> Conv:
    """IR for ``nn.Conv2d`` with the same arguments."""
    return _conv("Conv2d", 2, in_channels, out_channels, kernel_size, **kw)


def Linear(in_features: int, out_features: int, bias: bool = True) -> _Linear:
    """IR for ``nn.Linear``."""
    return _Linear("Linear", in_features, out_features, bias)


def BatchNorm1d(num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> BatchNorm:
    """IR for ``nn.BatchNorm1d``."""
    return BatchNorm("BatchNorm1d", num_features, eps, momentum)


def BatchNorm2d(num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> BatchNorm:
    """IR for ``nn.BatchNorm2d``."""
    return BatchNorm("BatchNorm2d", num_features, eps, momentum)


def ReLU(inplace: bool = False) -> Activation:
    """IR for ``nn.ReLU``."""
    return Activation.of(ActKind.RELU, inplace=inplace)


def SiLU(inplace: bool = False) -> Activation:
    """IR for ``nn.SiLU``."""
    return Activation.of(ActKind.SILU, inplace=inplace)


def GELU(approximate: str = "none") -> Activation:
    """IR for ``nn.GELU``."""
    return Activation.of(ActKind.GELU, approximate=approximate)


def Sigmoid() -> Activation:
    """IR for ``nn.Sigmoid``."""
    return Activation.of(ActKind.SIGMOID)


def Tanh() -> Activation:
    """IR for ``nn.Tanh``."""
    return Activation.of(ActKind.TANH)


def Dropout(p: float = 0.5, inplace: bool = False) -> _Dropout:
    """IR for ``nn.Dropout``."""
    return _Dropout("Dropout", p, inplace)


def MaxPool2d(kernel_size: Any, stride: Any = None, padding: Any = 0) -> Primitive:
    """IR for ``nn.MaxPool2d``."""
    return TorchLayer("MaxPool2d", (("kernel_size", kernel_size), ("stride", stride if stride is not None
                                                                     else kernel_size), ("padding", padding)))


def AdaptiveAvgPool2d(output_size: Any) -> Primitive:
    """IR for ``nn.AdaptiveAvgPool2d``."""
    return TorchLayer("AdaptiveAvgPool2d", (("output_size", output_size),))


def Flatten(start_dim: int = 1, end_dim: int = -1) -> Primitive:
    """IR for ``nn.Flatten``."""
    return TorchLayer("Flatten", (("start_dim", start_dim), ("end_dim", end_dim)))

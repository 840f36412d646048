"""Constructors that read like torch for building IR by hand: ``Conv2d(3, 16, 3, padding=1)``.

``Linear``/``Conv1d``/``Conv2d`` take ``activation="relu"`` (any ``ActKind`` name) and then give
``Chain(layer, activation)``, Axon-style. Each builder gives the same IR that capturing the torch
layer gives, so passes treat hand-built and captured layers alike.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from torchgraft.errors import IRError
from torchgraft.ir.activations import ActKind
from torchgraft.ir.nodes import Chain
from torchgraft.ir.primitives import Activation, BatchNorm, Conv, Primitive, TorchLayer
from torchgraft.ir.primitives import Dropout as _Dropout
from torchgraft.ir.primitives import Identity as _Identity
from torchgraft.ir.primitives import LayerNorm as _LayerNorm
from torchgraft.ir.primitives import Linear as _Linear


def _pair(v: Any, n: int) -> Any:
    return v if isinstance(v, (tuple, str)) else (v,) * n


_P = TypeVar("_P", bound=Primitive)


def _activated(layer: _P, activation: str | None) -> _P | Chain:
    """``layer``, or ``Chain(layer, activation)`` (items named "0", "1") when an activation is named."""
    if activation is None:
        return layer
    try:
        kind = ActKind.parse(activation) if isinstance(activation, str) else None
    except ValueError:
        kind = None
    if kind is None:
        raise IRError(f"{layer.op}: unknown activation {activation!r}; known: "
                      f"{', '.join(k.functional for k in ActKind)}")
    return Chain(layer, Activation.of(kind, **kind.options))  # options spelled out, as capture has them


def _conv(op: str, n: int, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
          padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
          padding_mode: str = "zeros") -> Conv:
    return Conv(op, in_channels, out_channels, _pair(kernel_size, n), _pair(stride, n), _pair(padding, n),
                (0,) * n, _pair(dilation, n), groups, bias, padding_mode)


@overload
def Conv1d(in_channels: int, out_channels: int, kernel_size: Any, *, activation: None = None,
           **kw: Any) -> Conv: ...
@overload
def Conv1d(in_channels: int, out_channels: int, kernel_size: Any, *, activation: str, **kw: Any) -> Chain: ...
def Conv1d(in_channels: int, out_channels: int, kernel_size: Any, *, activation: str | None = None,
           **kw: Any) -> Conv | Chain:
    """IR for ``nn.Conv1d`` with the same arguments; ``activation="relu"`` gives ``Chain(conv, relu)``."""
    return _activated(_conv("Conv1d", 1, in_channels, out_channels, kernel_size, **kw), activation)


@overload
def Conv2d(in_channels: int, out_channels: int, kernel_size: Any, *, activation: None = None,
           **kw: Any) -> Conv: ...
@overload
def Conv2d(in_channels: int, out_channels: int, kernel_size: Any, *, activation: str, **kw: Any) -> Chain: ...
def Conv2d(in_channels: int, out_channels: int, kernel_size: Any, *, activation: str | None = None,
           **kw: Any) -> Conv | Chain:
    """IR for ``nn.Conv2d`` with the same arguments: ``Conv2d(3, 16, 3, padding=1, activation="relu")``."""
    return _activated(_conv("Conv2d", 2, in_channels, out_channels, kernel_size, **kw), activation)


@overload
def Linear(in_features: int, out_features: int, bias: bool = True, *, activation: None = None) -> _Linear: ...
@overload
def Linear(in_features: int, out_features: int, bias: bool = True, *, activation: str) -> Chain: ...
def Linear(in_features: int, out_features: int, bias: bool = True, *,
           activation: str | None = None) -> _Linear | Chain:
    """IR for ``nn.Linear`` (the class is ``ir.LinearOp``): ``Linear(784, 128, activation="relu")``."""
    return _activated(_Linear("Linear", in_features, out_features, bias), activation)


def BatchNorm1d(num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> BatchNorm:
    """IR for ``nn.BatchNorm1d``."""
    return BatchNorm("BatchNorm1d", num_features, eps, momentum)


def BatchNorm2d(num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> BatchNorm:
    """IR for ``nn.BatchNorm2d``."""
    return BatchNorm("BatchNorm2d", num_features, eps, momentum)


def LayerNorm(normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
              bias: bool = True) -> _LayerNorm:
    """IR for ``nn.LayerNorm`` (the class is ``ir.LayerNormOp``): ``LayerNorm(32)``, ``LayerNorm((4, 8))``."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return _LayerNorm("LayerNorm", shape, eps, elementwise_affine, bias)


def Embedding(num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> TorchLayer:
    """IR for ``nn.Embedding``: ``Embedding(100, 32)``; a negative ``padding_idx`` counts from the end."""
    for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise IRError(f"Embedding.{name} must be a positive int, got {v!r}")
    if padding_idx is not None:
        if not -num_embeddings <= padding_idx < num_embeddings:
            raise IRError(f"Embedding.padding_idx={padding_idx} must be within num_embeddings={num_embeddings}")
        padding_idx = padding_idx % num_embeddings  # what nn.Embedding stores
    return TorchLayer("Embedding", (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim),
                                    ("padding_idx", padding_idx), ("max_norm", max_norm),
                                    ("norm_type", float(norm_type)), ("scale_grad_by_freq", scale_grad_by_freq),
                                    ("sparse", sparse)))


def _softmax(op: str, dim: int) -> TorchLayer:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise IRError(f"{op}.dim must be an int, got {dim!r}")
    return TorchLayer(op, (("dim", dim),))


def Softmax(dim: int) -> TorchLayer:
    """IR for ``nn.Softmax(dim)``: ``Softmax(dim=1)``."""
    return _softmax("Softmax", dim)


def LogSoftmax(dim: int) -> TorchLayer:
    """IR for ``nn.LogSoftmax(dim)``: ``LogSoftmax(dim=-1)``."""
    return _softmax("LogSoftmax", dim)


def Identity() -> _Identity:
    """IR for ``nn.Identity()``."""
    return _Identity()


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

"""Emitted by torchgraft from torchvision.models.mobilenetv2.MobileNetV2. Needs only torch and safetensors."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv2dNormActivation(nn.Sequential):
    """From torchvision.ops.misc.Conv2dNormActivation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """From torchvision.models.mobilenetv2.InvertedResidual."""

    def __init__(
        self,
        channels: int,
        out_channels: int,
        in_channels: int | None = None,
        use_conv_0: bool = False,
        stride: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv = nn.Sequential(
            *(
                [Conv2dNormActivation(in_channels, channels, kernel_size=1, padding=0)]
                if use_conv_0
                else []
            ),
            Conv2dNormActivation(channels, channels, stride=stride, groups=channels),
            nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if self.residual:
            out = x + out
        return out


class MobileNetV2(nn.Module):
    """From torchvision.models.mobilenetv2.MobileNetV2."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 32, stride=2),
            InvertedResidual(32, 16),
            InvertedResidual(96, 24, in_channels=16, use_conv_0=True, stride=2),
            InvertedResidual(144, 24, in_channels=24, use_conv_0=True, residual=True),
            InvertedResidual(144, 32, in_channels=24, use_conv_0=True, stride=2),
            *[
                InvertedResidual(
                    192, 32, in_channels=32, use_conv_0=True, residual=True
                )
                for _ in range(2)
            ],
            InvertedResidual(192, 64, in_channels=32, use_conv_0=True, stride=2),
            *[
                InvertedResidual(
                    384, 64, in_channels=64, use_conv_0=True, residual=True
                )
                for _ in range(3)
            ],
            InvertedResidual(384, 96, in_channels=64, use_conv_0=True),
            *[
                InvertedResidual(
                    576, 96, in_channels=96, use_conv_0=True, residual=True
                )
                for _ in range(2)
            ],
            InvertedResidual(576, 160, in_channels=96, use_conv_0=True, stride=2),
            *[
                InvertedResidual(
                    960, 160, in_channels=160, use_conv_0=True, residual=True
                )
                for _ in range(2)
            ],
            InvertedResidual(960, 320, in_channels=160, use_conv_0=True),
            Conv2dNormActivation(320, 1280, kernel_size=1, padding=0),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), (1, 1)), 1)
        return self.classifier(x)


def build() -> MobileNetV2:
    """The model, freshly initialised."""
    return MobileNetV2()


def load(weights: str | Path | None = None) -> MobileNetV2:
    """The model with weights loaded strict=True (default: the file beside this one)."""
    from safetensors.torch import load_file

    model = build()
    weights = weights or Path(__file__).with_name("weights.safetensors")
    model.load_state_dict(load_file(weights), strict=True)
    return model

"""Emitted by torchgraft from torchgraft.examples.nets.Net. Needs only torch and safetensors."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """From torchgraft.examples.nets.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(16, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 16, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class Net(nn.Module):
    """From torchgraft.examples.nets.Net."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(BasicBlock(), BasicBlock())
        self.pool = nn.AdaptiveAvgPool2d(output_size=1)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))


def build() -> Net:
    """The model, freshly initialised."""
    return Net()


def load(weights: str | Path | None = None) -> Net:
    """The model with weights loaded strict=True (default: the file beside this one)."""
    from safetensors.torch import load_file

    model = build()
    weights = weights or Path(__file__).with_name("weights.safetensors")
    model.load_state_dict(load_file(weights), strict=True)
    return model

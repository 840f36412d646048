"""Emitted by torchgraft from torchvision.models.resnet.ResNet. Needs only torch and safetensors."""

from pathlib import Path

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class BasicBlock2(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(64, 128, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(128, 128, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(128)
        self.downsample = nn.Sequential(
            nn.Conv2d(64, 128, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(128),
        )

    def forward(self, x: Tensor) -> Tensor:
        bn2 = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(bn2 + self.downsample(x))


class BasicBlock3(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(128, 128, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(128, 128, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(128)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class BasicBlock4(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(128, 256, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(256)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(256)
        self.downsample = nn.Sequential(
            nn.Conv2d(128, 256, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(256),
        )

    def forward(self, x: Tensor) -> Tensor:
        bn2 = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(bn2 + self.downsample(x))


class BasicBlock5(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(256)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(256)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class BasicBlock6(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(256, 512, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(512)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(512)
        self.downsample = nn.Sequential(
            nn.Conv2d(256, 512, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(512),
        )

    def forward(self, x: Tensor) -> Tensor:
        bn2 = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(bn2 + self.downsample(x))


class BasicBlock7(nn.Module):
    """From torchvision.models.resnet.BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(512)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(512)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class ResNet(nn.Module):
    """From torchvision.models.resnet.ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(), BasicBlock())
        self.layer2 = nn.Sequential(BasicBlock2(), BasicBlock3())
        self.layer3 = nn.Sequential(BasicBlock4(), BasicBlock5())
        self.layer4 = nn.Sequential(BasicBlock6(), BasicBlock7())
        self.avgpool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: Tensor) -> Tensor:
        layer2 = self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(self.layer4(self.layer3(layer2))), 1))


def build() -> ResNet:
    """The model, freshly initialised."""
    return ResNet()


def load(weights: str | Path | None = None) -> ResNet:
    """The model with weights loaded strict=True (default: the file beside this one)."""
    from safetensors.torch import load_file

    model = build()
    path = weights if weights is not None else Path(__file__).with_name("weights.safetensors")
    model.load_state_dict(load_file(str(path)), strict=True)
    return model

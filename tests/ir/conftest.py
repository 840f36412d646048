"""IR test fixtures: a small residual CNN, captured; resnet18, captured; a hand-built model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.ir import (
    Activation,
    ActKind,
    Block,
    ChildCall,
    ClassRef,
    Graph,
    Input,
    MethodCall,
    Model,
    Op,
    PrimCall,
    Ref,
    Spelling,
    TensorType,
)


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16), BasicBlock(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Tied(nn.Module):
    """Tied weights, a shared module and a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        self.shared = nn.Linear(8, 8)
        self.again = self.shared

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx) * self.scale
        return self.head(self.again(self.shared(h)))


@pytest.fixture(scope="session")
def net_ir() -> Model:
    """``Net`` captured on a (2, 3, 32, 32) input."""
    torch.manual_seed(0)
    return torchgraft.capture(Net(), (torch.randn(2, 3, 32, 32),))


@pytest.fixture(scope="session")
def tied_ir() -> Model:
    """``Tied`` captured on token ids."""
    torch.manual_seed(0)
    return torchgraft.capture(Tied(), (torch.randint(0, 10, (2, 5)),))


@pytest.fixture(scope="session")
def resnet18_ir(torchvision: Any) -> Model:
    """torchvision's resnet18 captured on a small (1, 3, 64, 64) input."""
    torch.manual_seed(0)
    return torchgraft.capture(torchvision.models.resnet18(), (torch.randn(1, 3, 64, 64),))


def tiny_model() -> Model:
    """A hand-built model: conv -> bn -> F.relu -> mean over H, W -> fc."""
    x = TensorType(("N", 3, 8, 8))
    body = Graph(
        inputs=(Input("x", x),),
        ops=(Op("conv", ChildCall("conv"), (Ref("x"),), type=TensorType(("N", 8, 8, 8))),
             Op("bn", ChildCall("bn"), (Ref("conv"),), type=TensorType(("N", 8, 8, 8))),
             Op("relu", PrimCall(Activation.of(ActKind.RELU, spelling=Spelling.FUNCTIONAL)), (Ref("bn"),)),
             Op("mean", MethodCall("mean"), (Ref("relu"), ir.Seq((ir.Const(2), ir.Const(3))))),
             Op("fc", ChildCall("fc"), (Ref("mean"),))),
        output=Ref("fc"))
    root = Block(ClassRef("demo", "Tiny"),
                 (("conv", ir.Conv2d(3, 8, 3, padding=1, bias=False)), ("bn", ir.BatchNorm2d(8)),
                  ("fc", ir.LinearLayer(8, 10))),
                 body)
    types = (("", TensorType(("N", 10))), ("bn", TensorType(("N", 8, 8, 8))), ("conv", TensorType(("N", 8, 8, 8))),
             ("fc", TensorType(("N", 10))))
    return Model("Tiny", root, body.inputs, TensorType(("N", 10)), types)



@pytest.fixture
def tiny() -> Model:
    """The hand-built ``tiny_model()``."""
    return tiny_model()

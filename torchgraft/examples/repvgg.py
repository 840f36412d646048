"""RepVGG branch reparameterisation with torchgraft's pattern API, in a few dozen lines.

Training-time RepVGG blocks sum three branches (3x3 conv + BN, 1x1 conv + BN, BN on
the identity) and apply ReLU; at inference the three fold into one 3x3 conv::

    model = torchgraft.capture(RepVGGNet().eval(), (x,))
    fused, sites = reparameterize(model)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Chain, Node
from torchgraft.ir.primitives import BatchNorm, Conv
from torchgraft.passes.base import Match
from torchgraft.passes.fuse_conv_bn import fold_weights
from torchgraft.passes.patterns import Branches, Cap, Kind, PatternMatch, Seq, rewrite


class RepVGGBlock(nn.Module):
    """The training-time block: three parallel branches summed, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.one = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.dense(x) + self.one(x) + self.identity(x))


class RepVGGNet(nn.Module):
    """A stem conv and a few RepVGG blocks."""

    def __init__(self, channels: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(RepVGGBlock(channels) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))


PATTERN = Seq(Branches(Seq(Cap("c3", Kind("Conv")), Cap("b3", Kind("BatchNorm"))),
                       Seq(Cap("c1", Kind("Conv")), Cap("b1", Kind("BatchNorm"))),
                       Cap("bid", Kind("BatchNorm")), combine="add"),
              Cap("act", Kind("Activation")))


def _fuse(m: PatternMatch) -> tuple[Node, Mapping[str, Tensor]] | None:
    c3, c1, bid = m.nodes["c3"], m.nodes["c1"], m.nodes["bid"]
    assert isinstance(c3, Conv) and isinstance(c1, Conv) and isinstance(bid, BatchNorm)
    if c3.groups != 1 or c1.groups != 1 or c3.in_channels != c3.out_channels:
        return None
    w3, b3 = fold_weights(c3, m.tensors["c3"]["weight"], None, m.tensors["b3"], m.nodes["b3"])  # type: ignore[arg-type]
    w1, b1 = fold_weights(c1, m.tensors["c1"]["weight"], None, m.tensors["b1"], m.nodes["b1"])  # type: ignore[arg-type]
    eye = torch.zeros_like(w3)
    eye[torch.arange(c3.out_channels), torch.arange(c3.out_channels), 1, 1] = 1.0
    wid, bid_b = fold_weights(c3, eye, None, m.tensors["bid"], bid)
    weight = w3 + F.pad(w1, [1, 1, 1, 1]) + wid
    conv = replace(c3, bias=True)
    return Chain(conv, m.nodes["act"], names=("conv", "act")), {"conv.weight": weight, "conv.bias": b3 + b1 + bid_b}


def reparameterize(model: Model) -> tuple[Model, list[Match]]:
    """Fold every RepVGG block into one 3x3 conv + activation (an inference model)."""
    return rewrite(model, PATTERN, _fuse)

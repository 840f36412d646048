"""The one explicit registry of passes: name → class."""

from __future__ import annotations

from torchgraft.passes.base import Pass
from torchgraft.passes.cleanup import EliminateIdentity, FlattenChains, RemoveDropout
from torchgraft.passes.desugar import Desugar
from torchgraft.passes.fuse_conv_bn import FuseConvBN
from torchgraft.passes.lora import LoRA
from torchgraft.passes.name_block import NameBlock
from torchgraft.passes.replace_module import ReplaceModule
from torchgraft.passes.swap_activation import SwapActivation

REGISTRY: dict[str, type[Pass]] = {cls.name: cls for cls in (
    SwapActivation,
    FuseConvBN,
    RemoveDropout,
    EliminateIdentity,
    FlattenChains,
    ReplaceModule,
    LoRA,
    Desugar,
    NameBlock,
)}

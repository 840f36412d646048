"""The torchgraft IR: typed, immutable, hierarchical. Data only: no tracing, passes or codegen.

Build by hand (Flux/Axon style)::

    from torchgraft import ir
    net = ir.Chain(ir.Conv2d(3, 16, 3, padding=1), ir.BatchNorm2d(16), ir.ReLU())
"""

from torchgraft.ir.activations import ActKind, Spelling
from torchgraft.ir.build import (
                                 GELU,
                                 AdaptiveAvgPool2d,
                                 BatchNorm1d,
                                 BatchNorm2d,
                                 Conv1d,
                                 Conv2d,
                                 Dropout,
                                 Flatten,
                                 MaxPool2d,
                                 ReLU,
                                 Sigmoid,
                                 SiLU,
                                 Tanh,
)
from torchgraft.ir.build import Linear as LinearLayer
from torchgraft.ir.graph import (
                                 ChildCall,
                                 FunctionCall,
                                 GetAttr,
                                 Graph,
                                 Guard,
                                 Input,
                                 InputKind,
                                 MethodCall,
                                 Op,
                                 PrimCall,
)
from torchgraft.ir.model import Helper, Model
from torchgraft.ir.nodes import (
                                 Block,
                                 Chain,
                                 ChildRef,
                                 ClassRef,
                                 Combine,
                                 CombineKind,
                                 Container,
                                 Node,
                                 Opaque,
                                 Parallel,
                                 PySource,
                                 SkipConnection,
                                 StateSpec,
                                 module_children,
)
from torchgraft.ir.primitives import (
                                 Activation,
                                 BatchNorm,
                                 Conv,
                                 GroupNorm,
                                 Identity,
                                 LayerNorm,  # noqa: F401
                                 Linear,
                                 Primitive,
                                 Recurrent,
                                 TorchLayer,
)
from torchgraft.ir.primitives import Dropout as DropoutOp
from torchgraft.ir.traverse import find, map_tree, replace_at, walk
from torchgraft.ir.types import UNKNOWN, Dim, ScalarType, TensorType, ValueType
from torchgraft.ir.values import ByMode, Const, Ref, Seq, Slice, Training

__all__ = [
    "GELU", "UNKNOWN", "ActKind", "Activation", "AdaptiveAvgPool2d", "BatchNorm", "BatchNorm1d", "BatchNorm2d",
    "Block", "Chain", "ChildCall", "ChildRef", "ClassRef", "Combine", "CombineKind", "Const", "Container", "Conv",
    "Conv1d", "Conv2d", "Dim", "Dropout", "DropoutOp", "Flatten", "FunctionCall", "GetAttr", "Graph", "GroupNorm",
    "Guard", "Helper", "Identity", "Input", "InputKind", "LayerNorm", "Linear", "LinearLayer", "MaxPool2d",
    "MethodCall",
    "Model", "Node", "Op", "Opaque", "Parallel", "PySource", "PrimCall", "Primitive", "Recurrent", "ReLU", "Ref",
    "ScalarType",
    "Seq",
    "SiLU", "Sigmoid", "SkipConnection", "Slice", "Spelling", "StateSpec", "Tanh", "TensorType", "Training", "ByMode",
    "TorchLayer", "ValueType", "find", "map_tree", "module_children", "replace_at", "walk",
]

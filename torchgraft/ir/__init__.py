"""The torchgraft IR: typed, immutable, hierarchical. Data only: no tracing, passes or codegen.

Build by hand (Flux/Axon style)::

    from torchgraft import ir
    net = ir.Chain(ir.Conv2d(3, 16, 3, padding=1), ir.BatchNorm2d(16), ir.ReLU())
    net = ir.Chain(stem=ir.Conv2d(3, 16, 3, padding=1, activation="relu"),
                   mix=ir.Parallel(a=ir.Conv2d(16, 8, 1), b=ir.Conv2d(16, 8, 3, padding=1),
                                   combine=ir.Concat(dim=1)))
    mlp = ir.Linear(784, 128, activation="relu") >> ir.Linear(128, 10) >> ir.Softmax(dim=1)

Builders (``ir.Linear``, ``ir.LayerNorm``, ``ir.Dropout``) read like torch; their primitive classes
are ``ir.LinearOp``, ``ir.LayerNormOp``, ``ir.DropoutOp``.
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
                                 Embedding,
                                 Flatten,
                                 LayerNorm,
                                 Linear,
                                 LogSoftmax,
                                 MaxPool2d,
                                 ReLU,
                                 Sigmoid,
                                 SiLU,
                                 Softmax,
                                 Tanh,
)
from torchgraft.ir.build import Linear as LinearLayer
from torchgraft.ir.combine import Concat, Stack
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
from torchgraft.ir.model import Helper, HelperKind, Model
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
                                 Primitive,
                                 Recurrent,
                                 TorchLayer,
)
from torchgraft.ir.primitives import Dropout as DropoutOp
from torchgraft.ir.primitives import LayerNorm as LayerNormOp
from torchgraft.ir.primitives import Linear as LinearOp
from torchgraft.ir.traverse import find, map_tree, replace_at, walk
from torchgraft.ir.types import UNKNOWN, Dim, ScalarType, TensorType, ValueType
from torchgraft.ir.values import ByMode, Const, Ref, Seq, Slice, Training
from torchgraft.ir.verify import verify  # ir.verify(model), as the design says (shadows the submodule's name)

__all__ = [
    "GELU", "UNKNOWN", "ActKind", "Activation", "AdaptiveAvgPool2d", "BatchNorm", "BatchNorm1d", "BatchNorm2d",
    "Block", "Chain", "ChildCall", "ChildRef", "ClassRef", "Combine", "CombineKind", "Const", "Container", "Conv",
    "Concat", "Conv1d", "Conv2d", "Dim", "Dropout", "DropoutOp", "Embedding", "Flatten", "FunctionCall", "GetAttr",
    "Graph", "GroupNorm",
    "Guard", "Helper", "HelperKind", "Identity", "Input", "InputKind", "LayerNorm", "LayerNormOp", "Linear",
    "LinearLayer",
    "LinearOp", "LogSoftmax", "MaxPool2d",
    "MethodCall",
    "Model", "Node", "Op", "Opaque", "Parallel", "PySource", "PrimCall", "Primitive", "Recurrent", "ReLU", "Ref",
    "ScalarType",
    "Seq",
    "SiLU", "Sigmoid", "SkipConnection", "Slice", "Softmax", "Spelling", "Stack", "StateSpec", "Tanh", "TensorType",
    "Training", "ByMode",
    "TorchLayer", "ValueType", "find", "map_tree", "module_children", "replace_at", "verify", "walk",
]

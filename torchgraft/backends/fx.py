"""To and from ``torch.fx.GraphModule``, for users who already have fx passes.

``to_fx(model)`` emits the IR as PyTorch source, builds that module (weights loaded) and
traces it with ``torch.fx.symbolic_trace``: the GraphModule computes exactly what the
emitted model computes, and its state_dict keys are the emitted model's. It is traced
in eval mode unless ``train=True`` (fx bakes ``self.training`` in).

``from_fx(gm, args)`` captures a GraphModule back into the IR. fx keeps the submodules
a graph calls under their dotted paths, with plain ``nn.Module`` objects as the
intermediate levels; those become ``nn.ModuleDict``s so every path stays addressable
(state_dict keys are unchanged). The Block is named after the traced class.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef


def to_fx(model: Model, train: bool = False) -> torch.fx.GraphModule:
    """The model as a ``torch.fx.GraphModule`` (emitted, weights loaded, then symbolically traced)."""
    from torchgraft.backends.torch.emitter import emit

    module = emit(model).materialize().train(train)
    return torch.fx.symbolic_trace(module)


def _containers_as_dicts(module: nn.Module) -> None:
    """Replace plain ``nn.Module`` intermediate levels (no forward) by ``nn.ModuleDict``s, in place."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        _containers_as_dicts(child)
        if type(child) is nn.Module and not child._parameters and not child._buffers:
            module._modules[name] = nn.ModuleDict({k: v for k, v in child._modules.items() if v is not None})


def from_fx(gm: torch.fx.GraphModule, args: tuple[Any, ...] | Any = (), kwargs: dict[str, Any] | None = None,
            name: str | None = None) -> Model:
    """Capture a GraphModule into an ``ir.Model`` (``args``/``kwargs``: example inputs).

    ``gm`` is not changed; ``name`` names the emitted class (default: the traced class's name).
    """
    from torchgraft.frontends.capture import capture

    work = copy.deepcopy(gm)
    _containers_as_dicts(work)
    model = capture(work, args, kwargs)
    cls_name = name or type(gm).__name__
    if not cls_name.isidentifier():
        cls_name = "FxModule"
    if isinstance(model.root, Block):
        root = replace(model.root, cls=ClassRef("torch.fx.GraphModule", cls_name))
        return model.with_root(root, name=cls_name)
    return model

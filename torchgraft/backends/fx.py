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

from torchgraft.errors import EmitError
from torchgraft.ir.graph import Graph, Guard
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef
from torchgraft.ir.traverse import walk


def to_fx(model: Model, train: bool = False) -> torch.fx.GraphModule:
    """The model as a ``torch.fx.GraphModule`` (emitted, weights loaded, then symbolically traced).

    A model with guards (``model.report.guards``; ``ir.Guard`` ops) cannot be one: an fx graph has no
    control flow to raise from, and dropping them would make it silently specialised. That raises
    ``EmitError``; ``torchgraft.emit`` and ``torch.export.export`` of the emitted model keep them.
    """
    from torchgraft.backends.torch.emitter import emit

    guarded = [path or "<root>" for path, node in walk(model.root) if isinstance(node, Block) and any(
        isinstance(op.target, Guard) for body in (node.body, node.train_body) if isinstance(body, Graph)
        for op in body.ops)]
    if guarded:
        raise EmitError(f"to_fx: {len(guarded)} modules check guards at run time ({', '.join(guarded[:3])}"
                        f"{', ...' if len(guarded) > 3 else ''}), which a torch.fx graph cannot hold; use "
                        "torchgraft.emit(model).materialize(), or torch.export.export on it")

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

"""The floating dtype a model's layers are built in: what ``build()`` and ``retype`` must reproduce.

A layer is rebuilt from its constructor arguments (``nn.Linear(4, 2)``), which make float32 tensors;
loading a bfloat16 checkpoint into them would silently cast it to float32, and the model would compute in
float32. So the state's dtype is read back here:

    build_dtype(model)   # every floating tensor bfloat16
    -> torch.bfloat16    # model.py writes ``build()`` as ``Net().to(torch.bfloat16)``

A Block's own parameters and buffers carry their dtype (``StateSpec.dtype``); only the layers' (the
primitives') tensors need this. Layers in several floating dtypes, or in one other than float32 while
the rest of the state is not, cannot be rebuilt by one cast: ``IRError`` names a layer and the fix.
"""

from __future__ import annotations

import torch

from torchgraft.errors import IRError
from torchgraft.ir.model import Model
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join, walk

_DEFAULT = torch.float32
"""The dtype layer constructors make parameters in (``torch.get_default_dtype()`` at import, as assumed)."""


def _floating(tensors: dict[str, object]) -> dict[str, torch.dtype]:
    return {k: t.dtype for k, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}


def layer_keys(model: Model) -> set[str]:
    """The state keys of the model's layers (primitives): ``fc.weight``, ``layer1.0.bn1.running_mean``."""
    return {join(path, name) for path, node in walk(model.root) if isinstance(node, Primitive)
            for name, _, _ in node.state()}


def build_dtype(model: Model) -> torch.dtype | None:
    """The dtype to cast the freshly built model to, or None to keep what the constructors make (float32).

    It is the one floating dtype of all the state (weights and constants) when that is not float32;
    ``IRError`` when the layers' floating tensors are not all float32 and one cast cannot give every
    tensor its dtype."""
    everything = {**_floating(dict(model.weights)), **_floating(dict(model.constants))}
    kinds = set(everything.values())
    if len(kinds) == 1 and _DEFAULT not in kinds:
        return kinds.pop()
    layers = layer_keys(model)
    odd = sorted((k, d) for k, d in everything.items() if k in layers and d != _DEFAULT)
    if odd:
        key, dtype = odd[0]
        found = ", ".join(sorted({str(d).removeprefix("torch.") for d in kinds}))
        raise IRError(f"layer state {key!r} is {str(dtype).removeprefix('torch.')} while the model's state mixes "
                      f"{found} ({len(odd)} layer tensors not float32): the emitted layers are built in one dtype, "
                      f"so these would be cast silently; convert the model to one dtype before capture "
                      f"(model.to({dtype})) or its odd layers after load()")
    return None

"""Hand-built IR → a typed ``ir.Model`` (the Flux/Axon way of writing models as data).

    >>> net = Chain(Conv2d(3, 16, 3, padding=1), BatchNorm2d(16), ReLU())   # doctest: +SKIP
    >>> model = build_model(net, TensorType(("N", 3, 32, 32)))               # doctest: +SKIP

Types are inferred by building the emitted module on the meta device (no memory) and
running it twice with different sizes for each symbolic dim: a dim of a value that
follows a symbol stays that symbol.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchgraft.errors import IRError
from torchgraft.ir.graph import Input
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Node
from torchgraft.ir.types import Dim, TensorType, ValueType, type_of

_TRIAL_SIZES = (5, 7)


def _example(t: TensorType, size: int, device: str) -> torch.Tensor:
    shape = [size if isinstance(d, str) else d for d in t.shape]
    return torch.zeros(shape, dtype=getattr(torch, t.dtype), device=device)


def _run(module: nn.Module, inputs: tuple[TensorType, ...], size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {id(m): p for p, m in module.named_modules()}
    hooks = [m.register_forward_hook(lambda m, a, o: out.setdefault(names[id(m)], o)) for m in module.modules()]
    try:
        with torch.no_grad():
            module(*(_example(t, size, "meta") for t in inputs))
    finally:
        for h in hooks:
            h.remove()
    return out


def _merge(a: ValueType, b: ValueType, symbol: str) -> ValueType:
    if isinstance(a, TensorType) and isinstance(b, TensorType) and a.rank == b.rank:
        dims: tuple[Dim, ...] = tuple(x if x == y else symbol for x, y in zip(a.shape, b.shape))
        return TensorType(dims, a.dtype, "cpu")
    return a


def infer_types(root: Node, inputs: tuple[TensorType, ...], name: str = "Model") -> Model:
    """A typed Model for a hand-built IR tree, given input types (symbols such as ``"N"`` allowed)."""
    from torchgraft.backends.torch.emitter import emit

    symbols = {d for t in inputs for d in t.shape if isinstance(d, str)}
    if len(symbols) > 1:
        raise IRError(f"infer_types supports one symbolic dim, got {sorted(symbols)}; fix the others to sizes")
    symbol = symbols.pop() if symbols else "N"
    bare = Model(name, root, tuple(Input(f"x{i}" if i else "x", t) for i, t in enumerate(inputs)))
    module = emit(bare).materialize(load_weights=False, device="meta")
    try:
        first, second = (_run(module, inputs, s) for s in _TRIAL_SIZES)
    except Exception as e:
        raise IRError(f"the hand-built model does not run on inputs {', '.join(map(str, inputs))}: "
                      f"{type(e).__name__}: {e}") from e
    types = {p: _merge(type_of(first[p]), type_of(second[p]), symbol) for p in first if p in second}
    return Model(name, root, bare.inputs, types.get("", type_of(None)), tuple(sorted(types.items())))


def build_model(root: Node, *inputs: TensorType, name: str = "Model", seed: int = 0) -> Model:
    """A typed Model with freshly initialised weights (seeded), ready to emit, save and load."""
    from torchgraft.backends.torch.emitter import emit

    typed = infer_types(root, tuple(inputs), name)
    torch.manual_seed(seed)
    module = emit(typed).materialize(load_weights=False)
    state = {k: v.detach() for k, v in module.state_dict().items()}
    return Model(typed.name, typed.root, typed.inputs, typed.output_type, typed.types, weights=state)

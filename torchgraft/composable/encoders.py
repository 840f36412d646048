"""Encoders: each unaligned input becomes a vector ``(N, width)`` the trunk fuses.

- point data -> ``embedding`` (``nn.Embedding`` for tokens, ``nn.Linear`` for numbers);
- low data -> ``straight``: per-position embedding, a depthwise convolution (word order), attention
  layers, then the mean over the positions (so any length works);
- high data -> ``fan-in``: strided conv stages down to a low-structure map, flattened, then Linear;
- a captured ``ir.Model`` -> ``captured``: the model, then (pooling a map and) a Linear to ``width``.

>>> enc = encoder(Input(("N", "L"), vocab=100, name="text"), CONFIGS["small"], 32)  # doctest: +SKIP
>>> enc.model_type  # doctest: +SKIP
'straight'
"""

from __future__ import annotations

import math

from torchgraft.composable.layers import (
    Built,
    Flow,
    avg_pool,
    block,
    camel,
    conv,
    embedding,
    flatten,
    linear,
    stage,
    transformer_layer,
)
from torchgraft.composable.plan import Config
from torchgraft.composable.spec import Input, SpecError
from torchgraft.errors import IRError
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Chain, ChildRef, Node
from torchgraft.ir.types import TensorType

LOW_MAP = 64
"""Strided stages stop once the map has at most this many positions (low structure)."""


def encoder(spec: Input, cfg: Config, width: int) -> Built:
    """The encoder of ``spec`` (by its structure), as a Block named ``<Name>Encoder``."""
    if spec.structure == "point":
        return _point(spec, width)
    if spec.structure == "low":
        return _straight(spec, cfg, width)
    return _fan_in(spec, cfg, width)


def _point(spec: Input, width: int) -> Built:
    cls = f"{camel(spec.name)}Encoder"
    if spec.discrete:
        return Built(block(cls, [("embed", embedding(int(spec.vocab or 0), width))], ChildRef("embed")),
                     "embedding", width, 1)
    if len(spec.shape) == 2:
        return Built(block(cls, [("proj", linear(spec.channels, width))], ChildRef("proj")), "embedding", width, 1)
    f = Flow("x")
    h = f.method("h", "unsqueeze", f.ref("x"), -1)
    return Built(block(cls, [("proj", linear(1, width))], f.graph(f.child("out", "proj", h))), "embedding",
                 width, 1)


def _straight(spec: Input, cfg: Config, width: int) -> Built:
    """Embedding per position -> depthwise conv over the grid -> attention layers -> mean -> Linear."""
    w, d = cfg.width, spec.spatial_dims
    f = Flow("x")
    x = f.ref("x")
    if spec.discrete:
        embed: Node = embedding(int(spec.vocab or 0), w)
    else:
        x = f.method("x", "movedim", x, 1, -1)
        embed = linear(spec.channels, w)
    h = f.child("h", "embed", x)
    mixed = f.child("h", "mix", f.method("h", "movedim", h, -1, 1))
    h = f.method("h", "movedim", mixed, 1, -1)
    if d > 1:
        h = f.method("h", "flatten", h, 1, -2)
    h = f.child("h", "layers", h)
    v = f.method("pooled", "mean", h, 1)
    out = f.child("out", "proj", v)
    children = [("embed", embed), ("mix", conv(d, w, w, 3, 1, 1, groups=w)),
                ("layers", Chain(*(transformer_layer(w) for _ in range(cfg.depth)))), ("proj", linear(w, width))]
    return Built(block(f"{camel(spec.name)}Encoder", children, f.graph(out)), "straight", w, cfg.depth)


def halvings(grid: tuple[int, ...], limit: int = LOW_MAP) -> int:
    """How many stride-2 stages take ``grid`` down to at most ``limit`` positions (each halves, rounding up).

    >>> halvings((64, 64)), halvings((4096,)), halvings((10, 10))
    (3, 6, 1)
    """
    k = 0
    while math.prod(-(-s // 2 ** k) for s in grid) > limit:
        k += 1
    return k


def _fan_in(spec: Input, cfg: Config, width: int) -> Built:
    """Strided conv stages (Conv + GroupNorm + SiLU) down to a low map, flattened, then Linear to ``width``."""
    grid = tuple(int(s) for s in spec.grid)
    d, k = len(grid), halvings(grid)
    if d > 3:
        raise SpecError(f"Input {spec.name!r}: {d} grid dims; convolutions exist for 1 to 3 (fold some dims "
                        "into the channels)")
    c0 = cfg.channels_at(0)
    cin = c0 if spec.discrete else spec.channels
    stages = Chain(*(stage(d, cin if i == 0 else cfg.channels_at(i), cfg.channels_at(i + 1), cfg.depth)
                     for i in range(k)))
    positions = math.prod(-(-s // 2 ** k) for s in grid)
    proj = Chain(flatten(1), linear(cfg.channels_at(k) * positions, width))
    children: list[tuple[str, Node]] = [("stages", stages), ("proj", proj)]
    cls = f"{camel(spec.name)}Encoder"
    if not spec.discrete:
        return Built(block(cls, children, Chain(ChildRef("stages"), ChildRef("proj"))), "fan-in",
                     cfg.channels_at(k), k)
    f = Flow("x")
    h = f.method("h", "movedim", f.child("h", "embed", f.ref("x")), -1, 1)
    out = f.child("out", "proj", f.child("h", "stages", h))
    return Built(block(cls, [("embed", embedding(int(spec.vocab or 0), c0)), *children], f.graph(out)), "fan-in",
                 cfg.channels_at(k), k)


def _input_problem(spec: Input, model: Model) -> str | None:
    """Why ``model``'s recorded input type cannot take ``spec``'s data (None when it can, or is unrecorded)."""
    if len(model.inputs) != 1 or not isinstance(model.inputs[0].type, TensorType):
        return None
    have, need = model.inputs[0].type, spec.type
    if have.dtype != need.dtype or have.rank != need.rank:
        return f"it takes {have}, the input is {need}"
    for i, (a, b) in enumerate(zip(have.shape, need.shape)):
        if isinstance(a, int) and a != b:
            return f"dim {i} is {a} in the encoder's input type {have}, {b} in the input {need}"
    return None


def captured_output(spec: Input, model: Model) -> TensorType:
    """The output type of ``model`` on ``spec``'s data; SpecError when it cannot be an encoder of ``spec``."""
    from torchgraft.hand import infer_types

    where = f"encoders[{spec.name!r}]"
    if not isinstance(model, Model):
        raise SpecError(f"{where} must be an ir.Model (torchgraft.capture(module, (x,))), got {type(model).__name__}")
    carried = [k for k, v in (("helpers", model.helpers), ("ties", model.ties), ("constants", model.constants),
                              ("extra state", model.extra_state)) if v]
    if carried:
        raise SpecError(f"{where}: the model carries {', '.join(carried)}, which a composable encoder cannot hold "
                        "yet; build the composable model without it and join them with torchgraft.compose")
    problem, out = _input_problem(spec, model), None
    if problem is None:
        try:
            out = infer_types(model.root, (spec.type,)).output_type
        except IRError as e:
            problem = f"it fails on the input's type: {e}"
        else:
            problem = _output_problem(out)
    if problem is not None or not isinstance(out, TensorType):
        raise SpecError(f"{where} does not fit Input {spec.name!r} ({spec.type}): {problem}. Capture the encoder "
                        "on an example of the input's shape and dtype, or change the Input spec")
    return out


def captured(spec: Input, model: Model, out: TensorType, width: int) -> Built:
    """A captured (or built) ``model`` as the encoder of ``spec``: its output ``out`` (``captured_output``),
    a vector ``(N, C)`` or a map ``(N, C, *grid)`` (pooled), then ``Linear(C, width)``. Its weights stay its
    own, under ``<name>.backbone``."""
    c = int(out.shape[1])
    proj: Node = linear(c, width) if out.rank == 2 else Chain(avg_pool(out.rank - 2), flatten(1), linear(c, width))
    node = block(f"{camel(spec.name)}Encoder", [("backbone", model.root), ("proj", proj)],
                 Chain(ChildRef("backbone"), ChildRef("proj")))
    return Built(node, "captured", c, 1)


def _output_problem(out: object) -> str | None:
    if not isinstance(out, TensorType) or not out.dtype.startswith(("float", "bfloat")):
        return f"its output is {out}, not a float tensor"
    if out.rank < 2 or out.rank > 5 or not isinstance(out.shape[1], int):
        return f"its output is {out}; it must be a vector (N, C) or a map (N, C, ...) with C a size"
    return None

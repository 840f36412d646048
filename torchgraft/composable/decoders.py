"""Decoders of unaligned outputs: each turns the trunk's vector ``(N, width)`` into one output.

- a point output, or a low one with a fixed grid -> ``head``: Linear (then Unflatten to the grid);
- a high output -> ``fan-out``: Linear to a small seed map, then ConvTranspose stages that double the
  grid, then a conv to the output channels; a grid that is not the seed times a power of two is
  reached by cropping the last stage's map exactly (``narrow``).

Discrete outputs are logits with the classes in dim 1 (``Output.result_shape``).

>>> dec = fan_out(Output(("N", 1, 4096), name="sound"), CONFIGS["small"], 32)  # doctest: +SKIP
>>> dec.model_type, dec.depth  # doctest: +SKIP
('fan-out', 6)
"""

from __future__ import annotations

import math

from torchgraft.composable.encoders import halvings
from torchgraft.composable.layers import (
    Built,
    Flow,
    block,
    camel,
    conv,
    conv_block,
    flatten,
    linear,
    unflatten,
    up_block,
)
from torchgraft.composable.plan import Config
from torchgraft.composable.spec import Output, SpecError
from torchgraft.ir.nodes import Chain, ChildRef, Node


def out_channels(spec: Output) -> int:
    """Channels of the produced output: the vocabulary for discrete outputs, else the spec's channels."""
    return int(spec.vocab or 0) if spec.discrete else spec.channels


def head(spec: Output, width: int) -> Built:
    """``Linear(width, ...)`` (then ``Unflatten`` to a fixed grid, or to ``(N,)`` for one number)."""
    cls = f"{camel(spec.name)}Head"
    if not all(isinstance(d, int) for d in spec.grid):
        raise SpecError(f"Output {spec.name!r} has a variable grid {spec.grid}: its size can only come from an "
                        "aligned input with that grid; pass such an input in aligned=[...], or give the output "
                        "fixed sizes")
    c, grid = out_channels(spec), tuple(int(d) for d in spec.grid)
    fc = linear(width, c * math.prod(grid))
    if spec.structure == "point" and (spec.discrete or len(spec.shape) == 2):
        return Built(block(cls, [("fc", fc)], ChildRef("fc")), "head", width, 1)
    shape = flatten(0, -1) if not grid and len(spec.shape) == 1 else unflatten(1, (c, *grid))
    return Built(block(cls, [("fc", fc), ("shape", shape)], Chain(ChildRef("fc"), ChildRef("shape"))), "head",
                 width, 1)


def fan_out(spec: Output, cfg: Config, width: int) -> Built:
    """Linear to a seed map of at most 64 positions, ``k`` doubling stages, a conv to the output channels."""
    grid = tuple(int(d) for d in spec.grid)
    d, k = len(grid), halvings(grid)
    if d > 3:
        raise SpecError(f"Output {spec.name!r}: {d} grid dims; convolutions exist for 1 to 3 (fold some dims "
                        "into the channels)")
    seed = tuple(-(-s // 2 ** k) for s in grid)
    top = cfg.channels_at(k)
    seed_net = Chain(linear(width, top * math.prod(seed)), unflatten(1, (top, *seed)))
    stages = Chain(*(Chain(up_block(d, cfg.channels_at(i + 1), cfg.channels_at(i)),
                           *(conv_block(d, cfg.channels_at(i), cfg.channels_at(i)) for _ in range(cfg.depth - 1)))
                     for i in reversed(range(k))))
    children: list[tuple[str, Node]] = [("seed", seed_net), ("stages", stages),
                                        ("out", conv(d, cfg.channels_at(0), out_channels(spec), 3, 1, 1))]
    f = Flow("x")
    y = f.child("y", "out", f.child("h", "stages", f.child("h", "seed", f.ref("x"))))
    for i, (s, full) in enumerate(zip(grid, (s * 2 ** k for s in seed))):
        if full != s:  # the stages overshoot: keep the first ``s`` positions of that dim
            y = f.method("y", "narrow", y, 2 + i, 0, s)
    return Built(block(f"{camel(spec.name)}Decoder", children, f.graph(y)), "fan-out", top, k)

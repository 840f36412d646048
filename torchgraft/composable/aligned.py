"""The aligned path: inputs on the output's grid, decoded position by position.

Each aligned input has a *stem* (named after it) that maps it to features at every position; the
stems' maps are summed and go to the shared ``aligned`` encoder, which also gives the trunk a
vector. Each output on that grid has a decoder that adds the trunk's vector back (conditioning).

- high grids -> ``U``: the encoder halves the grid level by level (strided conv stages) and returns
  every level's map; the decoder doubles it back (ConvTranspose), concatenating the map of the same
  level (skip connections), then a 1x1 conv to the output channels;
- low grids (one grid dim, any length) -> ``straight``: attention layers over the positions; the
  decoder adds the vector, runs one more layer, then a Linear per position.

>>> u_levels((64, 64))
3
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torchgraft.composable.decoders import out_channels
from torchgraft.composable.layers import (
    Built,
    Flow,
    avg_pool,
    block,
    camel,
    conv,
    conv_block,
    embedding,
    flatten,
    linear,
    stage,
    transformer_layer,
    unflatten,
    up_block,
)
from torchgraft.composable.plan import Config
from torchgraft.composable.spec import Input, Output
from torchgraft.ir.nodes import Chain, ChildRef, Node
from torchgraft.ir.values import Ref, Seq

MAX_LEVELS = 6
LOW_MAP = 64


def u_levels(grid: Sequence[int]) -> int:
    """Halvings of the U: while every dim stays even and the map has more than 64 positions (at most 6)."""
    k = 0
    while (k < MAX_LEVELS and all(s % 2 ** (k + 1) == 0 for s in grid)
           and math.prod(s // 2 ** k for s in grid) > LOW_MAP):
        k += 1
    return k


def stem(spec: Input, cfg: Config, high: bool) -> Built:
    """Features at every position: ``(N, channels, *grid)`` for a U, ``(N, L, width)`` for a straight path."""
    cls = f"{camel(spec.name)}Stem"
    d = spec.spatial_dims
    f = Flow("x")
    if high:
        c = cfg.channels_at(0)
        if spec.discrete:
            out = f.method("h", "movedim", f.child("h", "embed", f.ref("x")), -1, 1)
            return Built(block(cls, [("embed", embedding(int(spec.vocab or 0), c))], f.graph(out)), "U", c, 1)
        return Built(block(cls, [("conv", conv_block(d, spec.channels, c))], ChildRef("conv")), "U", c, 1)
    w = cfg.width
    if spec.discrete:
        return Built(block(cls, [("embed", embedding(int(spec.vocab or 0), w))], ChildRef("embed")),
                     "straight", w, 1)
    out = f.child("h", "embed", f.method("h", "movedim", f.ref("x"), 1, -1))
    return Built(block(cls, [("embed", linear(spec.channels, w))], f.graph(out)), "straight", w, 1)


def u_encoder(grid: Sequence[int], cfg: Config, width: int) -> Built:
    """``(s0, s1, ..., sD, vector)``: the map at every level (``s0`` is the stems' sum) and the pooled last."""
    d, levels = len(grid), u_levels(grid)
    f = Flow("x")
    maps = [f.ref("x")]
    children: list[tuple[str, Node]] = []
    for k in range(1, levels + 1):
        children.append((f"down{k}", stage(d, cfg.channels_at(k - 1), cfg.channels_at(k), cfg.depth)))
        maps.append(f.child(f"s{k}", f"down{k}", maps[-1]))
    children.append(("pool", Chain(avg_pool(d), flatten(1), linear(cfg.channels_at(levels), width))))
    vector = f.child("vector", "pool", maps[-1])
    return Built(block("UEncoder", children, f.graph(Seq((*maps, vector)))), "U", cfg.channels_at(levels), levels)


def _up_level(d: int, cin: int, cout: int, depth: int) -> Node:
    f = Flow("x", "skip")
    up = f.child("up", "up", f.ref("x"))
    joined = f.fn("joined", "torch.cat", Seq((up, f.ref("skip"))), 1)
    return block("UpLevel", [("up", up_block(d, cin, cout)), ("merge", stage(d, 2 * cout, cout, depth, stride=1))],
                 f.graph(f.child("out", "merge", joined)))


def u_decoder(spec: Output, grid: Sequence[int], cfg: Config, width: int) -> Built:
    """Takes ``(vector, s0, ..., sD)``: ``sD`` plus the vector, then one UpLevel per level, then a 1x1 conv."""
    d, levels = len(grid), u_levels(grid)
    top = cfg.channels_at(levels)
    f = Flow("vector", *(f"s{k}" for k in range(levels + 1)))
    children: list[tuple[str, Node]] = [("cond", Chain(linear(width, top), unflatten(1, (top,) + (1,) * d)))]
    x = f.fn("x", "operator.add", f.ref(f"s{levels}"), f.child("cond", "cond", f.ref("vector")))
    for k in range(levels, 0, -1):
        children.append((f"up{k}", _up_level(d, cfg.channels_at(k), cfg.channels_at(k - 1), cfg.depth)))
        x = f.child("x", f"up{k}", x, f.ref(f"s{k - 1}"))
    children.append(("out", conv(d, cfg.channels_at(0), out_channels(spec), 1)))
    y = f.child("y", "out", x)
    return Built(block(f"{camel(spec.name)}Decoder", children, f.graph(y)), "U", top, levels)


def context(cfg: Config, width: int) -> Built:
    """``(features, vector)``: attention layers over the positions, and their mean through a Linear."""
    f = Flow("x")
    h = f.child("h", "layers", f.ref("x"))
    v = f.child("vector", "proj", f.method("pooled", "mean", h, 1))
    children: list[tuple[str, Node]] = [("layers", Chain(*(transformer_layer(cfg.width) for _ in range(cfg.depth)))),
                ("proj", linear(cfg.width, width))]
    return Built(block("Context", children, f.graph(Seq((h, v)))), "straight", cfg.width, cfg.depth)


def seq_decoder(spec: Output, cfg: Config, width: int) -> Built:
    """Takes ``(vector, features)``: adds the vector at every position, one attention layer, a Linear per
    position, the channels moved to dim 1."""
    w = cfg.width
    f = Flow("vector", "features")
    cond = f.child("cond", "cond", f.ref("vector"))
    h = f.child("h", "layer", f.fn("h", "operator.add", f.ref("features"), cond))
    y = f.method("y", "movedim", f.child("y", "out", h), -1, 1)
    children: list[tuple[str, Node]] = [("cond", Chain(linear(width, w), unflatten(1, (1, w)))),
                                        ("layer", transformer_layer(w)),
                ("out", linear(w, out_channels(spec)))]
    return Built(block(f"{camel(spec.name)}Decoder", children, f.graph(y)), "straight", w, 1)


def item(f: Flow, name: str, value: Ref, index: int) -> Ref:
    """``name = value[index]``."""
    return f.fn(name, "operator.getitem", value, index)

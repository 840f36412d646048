"""Sizes of a composable model (``Config``) and its plan: one row per input, output and shared part.

``compute="small" | "medium" | "high"`` name three configs; an int is a parameter budget, met by
the largest config of ``LADDER`` whose model does not exceed it (``universal`` counts them).

>>> CONFIGS["small"]
Config(width=32, depth=1, channels=8)
>>> print(Plan((PlanRow("image", "input", "high 2-D continuous", "fan-in", 32, 3, 1234),), "small"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torchgraft.ir.nodes import Block, Node, Opaque
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import walk


@dataclass(frozen=True, slots=True, order=True)
class Config:
    """``width``: features of the vectors the trunk fuses and of attention layers; ``depth``: layers
    per stage (trunk MLP layers, attention layers, convolutions per resolution); ``channels``: the
    convolution channels at full resolution (doubling per halving, at most 4x)."""

    width: int
    depth: int
    channels: int

    def channels_at(self, level: int) -> int:
        """Convolution channels after ``level`` halvings of the grid."""
        return self.channels * min(2 ** level, 4)


CONFIGS: dict[str, Config] = {
    "small": Config(32, 1, 8),
    "medium": Config(64, 2, 16),
    "high": Config(128, 3, 32),
}
"""The named compute levels."""

LADDER: tuple[Config, ...] = tuple(sorted(
    {Config(w, d, max(4, w // 4)) for w in (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512) for d in (1, 2, 3, 4)}
    | set(CONFIGS.values())))
"""The configs an int budget chooses from (the largest model that fits wins)."""


def count_params(node: Node) -> int:
    """The number of parameter elements an IR tree holds (buffers left out; tied ones counted per owner).

    >>> count_params(ir.LinearLayer(4, 2))  # doctest: +SKIP
    10
    """
    total = 0
    for _, n in walk(node):
        if isinstance(n, Primitive):
            total += sum(math.prod(shape) for _, shape, is_param in n.state() if is_param)
        elif isinstance(n, (Block, Opaque)):
            total += sum(math.prod(s.shape) for s in n.state if s.parameter)
    return total


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One part of the model: the spec it serves (or a shared part), how it is built, and its size."""

    name: str
    role: str
    """``input``, ``aligned`` (an input on the output grid), ``output``, or ``shared`` (trunk, U encoder)."""
    structure: str
    """The spec's structure, dims and kind (``high 2-D continuous``); ``-`` for shared parts."""
    model_type: str
    """``fan-in``, ``straight``, ``embedding``, ``U``, ``fan-out``, ``head``, ``trunk`` or ``captured``."""
    width: int
    depth: int
    params: int


@dataclass(frozen=True, slots=True)
class Plan:
    """How ``universal`` built a model: ``print(model.plan)`` shows the table.

    ``compute`` is the level asked for (a name, or the budget as text) and ``config`` what it chose.
    """

    rows: tuple[PlanRow, ...]
    compute: str
    config: Config | None = None

    @property
    def params(self) -> int:
        """All parameters of the model."""
        return sum(r.params for r in self.rows)

    def row(self, name: str) -> PlanRow:
        """The row of the part called ``name`` (KeyError naming the rows otherwise)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"the plan has no row {name!r}; rows: {[r.name for r in self.rows]}")

    def __str__(self) -> str:
        head = ("name", "role", "structure", "model type", "width", "depth", "params")
        body = [(r.name, r.role, r.structure, r.model_type, str(r.width), str(r.depth), f"{r.params:,}")
                for r in self.rows]
        body.append(("total", "", "", "", "", "", f"{self.params:,}"))
        sizes = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(s) if i >= 4 else c.ljust(s) for i, (c, s) in enumerate(zip(cells, sizes)))

        chosen = "" if self.config is None else (f": width {self.config.width}, depth {self.config.depth}, "
                                                 f"channels {self.config.channels}")
        rule = "  ".join("-" * s for s in sizes)
        return "\n".join([f"compute {self.compute}{chosen}", line(head), rule, *map(line, body[:-1]), rule,
                          line(body[-1])]).rstrip() + "\n"

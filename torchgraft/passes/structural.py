"""Moving passes: ``desugar`` and ``name-block`` plan new structure; state moves with its nodes.

A structural pass builds the new root out of the nodes it moves (the same objects, now at new
paths); ``ir.ownership.moved`` then carries weights, frozen flags, constants, extra state, types and
ties along, and the pass's key map is derived from the same edit (``Pass.key_map``). No pass
computes renames of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Node
from torchgraft.ir.ownership import moved
from torchgraft.passes.base import Match, Pass, Skip


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is not in ``taken``."""
    if base not in taken:
        return base
    i = 2
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


@dataclass
class Moves:
    """What a structural pass would do to one model: the new root, matches and skips."""

    root: Node
    matches: list[Match] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


class MovingPass(Pass):
    """A pass that moves subtrees (``desugar``, ``name-block``): it plans the ``Moves`` once per model; the
    rewrite moves the state with the nodes (``ir.ownership.moved``) and the key map follows from that.

    >>> Desugar().rewrite(model)[0].weights.keys()   # layer1.0.conv1.weight -> layer1.0.0.body.conv1.weight
    ...                                              # doctest: +SKIP
    """

    def plan(self, model: Model) -> Moves:
        """The moves this pass makes on ``model``."""
        raise NotImplementedError

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        moves = self.plan(model)
        if not moves.matches:
            return model, []
        return moved(model, moves.root), moves.matches

    def skipped(self, before: Model, after: Model) -> list[Skip]:
        return self.plan(before).skipped

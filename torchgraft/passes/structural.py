"""Moving state with structure: prefix renames applied to every path-keyed field of a Model.

A structural pass (``desugar``, ``name-block``) moves whole subtrees; it records the moves as
groups of ``old path -> new path`` and ``rename_model`` carries weights, frozen flags, constants,
extra state, types and ties along. Groups apply in order (inner edits first); the renames in one
group are simultaneous, so ``{"a": "b", "b": "c"}`` swaps nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Node
from torchgraft.passes.base import Match, Pass, Skip

Renames = list[dict[str, str]]


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is not in ``taken``."""
    if base not in taken:
        return base
    i = 2
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def rename_path(path: str, renames: Renames) -> str:
    """``path`` after every group of prefix renames (``layer1.0.conv1.weight`` -> ``layer1.0.0.conv1.weight``)."""
    for group in renames:
        for old, new in group.items():
            if path == old or path.startswith(old + "."):
                rest = path[len(old):]
                path = new + rest if new else rest.lstrip(".")  # a child that became the root
                break
    return path


def _keys(d: Mapping[str, Any], renames: Renames) -> dict[str, Any]:
    return {rename_path(k, renames): v for k, v in d.items()}


def renamed_keys(model: Model, renames: Renames) -> dict[str, str]:
    """Old -> new for each weight key of ``model`` the renames move (keys they leave alone are not listed)."""
    moved = {k: rename_path(k, renames) for k in model.weights}
    return {k: v for k, v in moved.items() if k != v}


def rename_model(model: Model, renames: Renames) -> Model:
    """``model`` with every path-keyed field renamed (weights, constants, extra state, frozen, types, ties)."""
    if not any(renames):
        return model
    return model.with_root(
        model.root,
        weights=_keys(model.weights, renames),
        constants=_keys(model.constants, renames),
        extra_state=_keys(model.extra_state, renames),
        frozen=tuple(rename_path(k, renames) for k in model.frozen),
        types=tuple((rename_path(p, renames), t) for p, t in model.types),
        ties=tuple((rename_path(a, renames), rename_path(b, renames)) for a, b in model.ties),
    )


@dataclass
class Moves:
    """What a structural pass would do to one model: the new root, the path renames, matches and skips."""

    root: Node
    renames: Renames = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


class MovingPass(Pass):
    """A pass that moves subtrees (``desugar``, ``name-block``): it plans the ``Moves`` once per model, and
    the rewrite, the key map and the skipped sites all read that plan."""

    def plan(self, model: Model) -> Moves:
        """The moves this pass makes on ``model``."""
        raise NotImplementedError

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        moves = self.plan(model)
        if not moves.matches:
            return model, []
        return rename_model(model.with_root(moves.root), moves.renames), moves.matches

    def skipped(self, before: Model, after: Model) -> list[Skip]:
        return self.plan(before).skipped

    def key_map(self, before: Model, after: Model) -> dict[str, str]:
        return renamed_keys(before, self.plan(before).renames)

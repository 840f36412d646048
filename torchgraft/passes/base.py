"""The Pass base class and what a pass reports about one run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torchgraft.ir.model import Model
from torchgraft.ir.ownership import derived_key_map


@dataclass(frozen=True)
class Match:
    """One site a pass rewrote: path, what was there, and how it was spelled. ``keeps_types``: the pass proved
    that every type stays as recorded after this edit (``Pass.types_kept``); not part of equality.

    >>> str(Match("layer1.0.relu", "relu"))
    'layer1.0.relu (relu, module)'
    """

    path: str
    what: str
    spelling: str = "module"
    keeps_types: bool = field(default=False, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path} ({self.what}, {self.spelling})"


@dataclass(frozen=True)
class Skip:
    """A site a pass looked at and left alone, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.reason}"


@dataclass
class PassReport:
    """What one pass did: matched sites, state_dict key changes, parameter counts."""

    name: str
    matches: list[Match] = field(default_factory=list)
    keys_added: list[str] = field(default_factory=list)
    keys_removed: list[str] = field(default_factory=list)
    keys_renamed: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.name}: {len(self.matches)} site(s), params {self.params_before:,} -> {self.params_after:,}"]
        lines += [f"  {m}" for m in self.matches[:20]]
        if len(self.matches) > 20:
            lines.append(f"  ... {len(self.matches) - 20} more")
        for label, keys in (("added", self.keys_added), ("removed", self.keys_removed)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                lines.append(f"  keys {label}: {shown}")
        if self.keys_renamed:
            items = list(self.keys_renamed.items())
            lines.append("  keys renamed: " + ", ".join(f"{a} -> {b}" for a, b in items[:6])
                         + (f", ... ({len(items)} in all)" if len(items) > 6 else ""))
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  skipped {s}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... {len(self.skipped) - 20} more skipped (report.skipped has them all)")
        return "\n".join(lines)


class Pass:
    """A rewrite: a frozen dataclass with a kebab-case ``name``, options as fields, one ``apply``.

    Subclasses implement ``rewrite(model) -> (model, matches)``; ``apply`` returns just
    the model. Passes never change their input: they return a new Model.
    """

    name: ClassVar[str] = ""
    keeps_semantics: ClassVar[bool] = True
    keeps_state: ClassVar[bool] = False
    """True for a pass that never adds, removes, moves or changes the kind of a parameter or buffer: its
    report's key map is empty and its parameter count unchanged, with no walk over the model (tested per pass)."""

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        """The rewritten model and the sites that changed."""
        raise NotImplementedError

    def apply(self, model: Model) -> Model:
        """The rewritten model."""
        return self.rewrite(model)[0]

    def skipped(self, before: Model, after: Model) -> list[Skip]:
        """Sites this pass could have rewritten but left alone, with the reason (empty by default)."""
        return []

    def types_kept(self, matches: list[Match]) -> bool:
        """Whether the pass proved that its edits (``matches``) keep every type the model records, so
        ``passes.run`` carries the types over instead of re-inferring them. False (re-infer) by default."""
        return False

    def key_map(self, before: Model, after: Model) -> dict[str, str]:
        """Old state_dict key → new key for entries this pass moved: derived from the edit, by following
        each key's owning node from ``before`` to ``after`` (``ir.ownership.derived_key_map``), so a
        pass that moves or wraps nodes needs no map of its own (``fc.weight -> fc.base.weight``)."""
        if self.keeps_state:
            return {}
        return derived_key_map(before, after)

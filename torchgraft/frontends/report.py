"""The capture report: how each module was captured, what stayed opaque, where state lives."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_GUARDS = 8
"""Guards the summary shows; ``report.guards`` has them all."""


@dataclass
class CaptureReport:
    """Per-module capture method and reasons: ``leaf`` (a torch.nn layer), ``container``
    (Sequential/ModuleList/ModuleDict), ``fx`` (own forward traced with torch.fx), ``trace``
    (run on its recorded inputs with torch calls recorded), ``source`` (forward source copied,
    e.g. for data-dependent control flow), ``opaque`` (kept whole, rebuilt from its class).

    ``state_keys`` counts the original state_dict entries; ``tied`` lists alias → owner
    paths of shared modules and tied parameters.
    """

    methods: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    state_keys: int = 0
    tied: list[tuple[str, str]] = field(default_factory=list)
    typing: str = "eager"
    """How the types were inferred: ``meta`` (IR replayed on meta tensors, nothing computed) or
    ``eager`` (replayed against the real modules, for models that need real values)."""

    guards: list[tuple[str, str, str]] = field(default_factory=list)
    """(module path, kind, message) of every run-time check the emitted forward makes: the
    assumptions the traces took from the example (an argument that was None, a branch on a size)."""

    notes: list[str] = field(default_factory=list)
    """What capture decided for the whole model that changes what it returns (a transformers
    decoder captured without its key/value cache: ``frontends.cache_free``)."""

    def add(self, path: str, method: str, reason: str = "") -> None:
        """Record how the module at ``path`` was captured."""
        self.methods[path] = method
        if reason:
            self.reasons[path] = reason

    def drop_below(self, path: str) -> None:
        """Forget the modules inside ``path``: it was captured whole (a torch.nn layer), they were not."""
        prefix = f"{path}." if path else ""
        for p in [p for p in self.methods if p != path and p.startswith(prefix)]:
            del self.methods[p]
            self.reasons.pop(p, None)

    def account(self, state: Mapping[str, Any], ties: list[tuple[str, str]]) -> None:
        """Record the state_dict size and the ties found."""
        self.state_keys = len(state)
        self.tied = list(ties)

    @property
    def opaque(self) -> dict[str, str]:
        """Paths of opaque modules → why."""
        return {p: r for p, r in self.reasons.items() if self.methods.get(p) == "opaque"}

    @property
    def copied(self) -> dict[str, str]:
        """Paths of modules whose forward source was copied (data-dependent control flow) → why."""
        return {p: r for p, r in self.reasons.items() if self.methods.get(p) == "source"}

    def summary(self) -> str:
        """A short printable summary."""
        counts = Counter(self.methods.values())
        lines = ["capture: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                 f"state_dict entries: {self.state_keys}, tied: {len(self.tied)}",
                 f"types inferred by: {'meta replay (nothing computed)' if self.typing == 'meta' else 'eager replay'}"]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"guards (run-time checks of what the example decided): {len(self.guards)}")
        lines += [f"  guard {p or '<root>'} [{k}]: {m}" for p, k, m in self.guards[:MAX_GUARDS]]
        if len(self.guards) > MAX_GUARDS:
            lines.append(f"  ... {len(self.guards) - MAX_GUARDS} more in report.guards")
        lines += [f"  opaque {p or '<root>'}: {r}" for p, r in self.opaque.items()]
        lines += [f"  source copied {p or '<root>'}: {r}" for p, r in self.copied.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

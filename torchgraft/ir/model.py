"""The top-level IR value: a root node plus signature, types, ties and helper code."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torchgraft.errors import IRError
from torchgraft.ir.graph import Input
from torchgraft.ir.nodes import NODE_TYPES, Node
from torchgraft.ir.types import UNKNOWN, ValueType


class HelperKind(enum.Enum):
    """What a helper's ``source`` is: a function or class copied from the model's source, an import line that
    copied code needs (``import math``), or a module-level constant it reads (``_EPS = 1e-06``)."""

    FUNCTION = "function"
    IMPORT = "import"
    CONSTANT = "const"


@dataclass(frozen=True, slots=True)
class Helper:
    """A plain Python function from the model's own source that its forward calls (or, by ``kind``, an import
    or a constant that such code needs).

    ``source`` is the code as copied at capture (decorators removed); the emitter writes it into
    ``model.py`` so the emitted file needs no import of it. ``Helper("math", "import math\n", "",
    HelperKind.IMPORT)`` is an import; a graph op calls a FUNCTION helper as ``helpers.<name>``.
    """

    name: str
    source: str
    origin: str
    kind: HelperKind = HelperKind.FUNCTION

    def __post_init__(self) -> None:
        if not isinstance(self.kind, HelperKind):
            raise IRError(f"helper {self.name!r}: kind {self.kind!r} is not a HelperKind")
        for kind in (HelperKind.IMPORT, HelperKind.CONSTANT):  # JSON written before kinds: "import:math"
            legacy = f"{kind.value}:"
            if self.kind is HelperKind.FUNCTION and isinstance(self.name, str) and self.name.startswith(legacy):
                object.__setattr__(self, "name", self.name[len(legacy):])
                object.__setattr__(self, "kind", kind)

    @property
    def key(self) -> str:
        """Unique among a model's helpers: the name, after ``import:``/``const:`` for those kinds."""
        return helper_key(self.kind, self.name)


def helper_key(kind: HelperKind, name: str) -> str:
    """``math`` for a function, ``import:math`` for an import, ``const:_EPS`` for a constant: the key that
    keeps a model's helpers apart (a function and a constant may share a name)."""
    return name if kind is HelperKind.FUNCTION else f"{kind.value}:{name}"


def merge_helpers(groups: Iterable[tuple[str, Iterable[Helper]]],
                  clash: Callable[[str, str, str], Exception]) -> dict[str, tuple[Helper, str]]:
    """The helpers of several owners in one file: key -> (helper, first owner carrying it), in first-seen order.

    The same helper carried twice is kept once; two owners with different code under one name raise
    ``clash(first owner, other owner, helper name)`` (one emitted file cannot hold both).

    >>> merge_helpers([("a", [h]), ("b", [h])], ValueError)   # doctest: +SKIP
    {'fn': (h, 'a')}
    """
    out: dict[str, tuple[Helper, str]] = {}
    for owner, helpers in groups:
        for h in helpers:
            if h.key in out and out[h.key][0].source != h.source:
                raise clash(out[h.key][1], owner, h.name)
            out.setdefault(h.key, (h, owner))
    return out


def _frozen_keys(keys: tuple[str, ...], weights: Mapping[str, Any]) -> tuple[str, ...]:
    """``keys`` checked, without repeats, and only those ``weights`` holds (all when it is empty)."""
    if not isinstance(keys, (tuple, list)):
        raise IRError(f"Model.frozen must be a tuple of state_dict keys, got {type(keys).__name__}")
    bad = [k for k in keys if not isinstance(k, str) or not k]
    if bad:
        raise IRError(f"Model.frozen must hold state_dict keys (non-empty strings), got {bad!r}")
    return tuple(k for k in dict.fromkeys(keys) if not weights or k in weights)


@dataclass(frozen=True, slots=True)
class Model:
    """A captured or hand-built model.

    ``root`` is the top node; ``inputs``/``output_type`` the forward signature; ``types``
    maps module paths to their output types; ``ties`` maps alias paths (modules or
    parameters) to the path that owns them; ``frozen`` lists the state_dict keys of the
    parameters with ``requires_grad=False`` (the emitted ``build()`` freezes them);
    ``weights`` holds the state_dict tensors (not part of equality); ``constants`` the
    values of non-persistent buffers and tensor constants, which are not in the
    state_dict; ``report`` is the capture report, when captured; ``extra_state`` the state_dict entries
    that are not tensors (what a ``get_extra_state`` returned: JSON values, ``ir.extra_state``).

    ``frozen`` keeps its order without repeats; when ``weights`` is non-empty, keys it does
    not hold are left out (a parameter a pass removed has no flag to keep). A pass that
    renames keys renames them in ``frozen`` too.
    """

    name: str
    root: Node
    inputs: tuple[Input, ...] = ()
    output_type: ValueType = UNKNOWN
    types: tuple[tuple[str, ValueType], ...] = ()
    ties: tuple[tuple[str, str], ...] = ()
    helpers: tuple[Helper, ...] = ()
    frozen: tuple[str, ...] = ()
    weights: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    report: Any = field(default=None, compare=False, hash=False, repr=False)
    constants: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    extra_state: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def helper_functions(self) -> dict[str, Helper]:
        """The copied FUNCTION helpers by name: what a graph op ``helpers.<name>`` calls."""
        return {h.name: h for h in self.helpers if h.kind is HelperKind.FUNCTION}

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise IRError(f"model name {self.name!r} must be an identifier")
        if not isinstance(self.root, NODE_TYPES):
            raise IRError(f"model root {self.root!r} is not an IR node")
        object.__setattr__(self, "frozen", _frozen_keys(self.frozen, self.weights))

    def type_at(self, path: str) -> ValueType:
        """Output type of the module at ``path`` ("" is the root), UNKNOWN when not inferred."""
        return dict(self.types).get(path, UNKNOWN)

    def with_root(self, root: Node, **changes: Any) -> Model:
        """A copy with a new root (and any other fields changed)."""
        return replace(self, root=root, **changes)

    def __str__(self) -> str:
        from torchgraft.ir.printer import format_model

        return format_model(self)

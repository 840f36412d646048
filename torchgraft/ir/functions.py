"""The allow-list of functions a graph may call, by qualified name.

Graphs name functions as strings (``"torch.flatten"``); this module turns a function
object into its public name at capture, and a name back into the object, only from
the namespaces below. Nothing is evaluated: names are looked up attribute by attribute.
"""

from __future__ import annotations

import builtins
import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from torchgraft.errors import IRError

NAMESPACES: tuple[tuple[str, Any], ...] = (
    ("torch.nn.functional", F),
    ("torch", torch),
    ("torch.linalg", torch.linalg),
    ("torch.fft", torch.fft),
    ("torch.special", torch.special),
    ("operator", operator),
    ("math", math),
)
SAFE_BUILTINS = frozenset({
    "getattr", "len", "int", "float", "bool", "tuple", "list", "range", "slice", "min", "max",
    "abs", "sum", "isinstance", "zip", "enumerate", "round", "divmod", "pow", "reversed", "dict", "str",
})
DENIED = frozenset({"torch.load", "torch.save", "torch.compile", "torch.set_default_device",
                    "torch.set_default_dtype", "torch.manual_seed", "torch.seed"})
HELPER_PREFIX = "helpers."
"""Functions copied from the model's own source into the emitted file live under this name."""


def helper_name(qualname: str) -> str | None:
    """``rotate_half`` for ``helpers.rotate_half`` (a function copied from the model's own source), else None."""
    return qualname[len(HELPER_PREFIX):] if qualname.startswith(HELPER_PREFIX) else None


def helper_qualname(name: str) -> str:
    """``helpers.rotate_half``: how a graph op names the copied helper function ``name``."""
    return HELPER_PREFIX + name


@functools.lru_cache(maxsize=1)
def _reverse() -> dict[int, str]:
    table: dict[int, str] = {}
    for prefix, ns in NAMESPACES:
        for name in dir(ns):
            if name.startswith("__"):
                continue
            obj = getattr(ns, name, None)
            if callable(obj) and not isinstance(obj, type(torch)):
                table.setdefault(id(obj), f"{prefix}.{name}")
    for name in SAFE_BUILTINS:
        table.setdefault(id(getattr(builtins, name)), f"builtins.{name}")
    return table


def qualname_of(fn: Callable[..., Any]) -> str | None:
    """The public name of ``fn`` (``F.relu`` → ``"torch.nn.functional.relu"``), None if not allow-listed."""
    name = _reverse().get(id(fn))
    if name is None or name in DENIED:
        return None
    return name


def resolve(qualname: str) -> Callable[..., Any]:
    """The function named ``qualname``; IRError if it is not in the allow-list."""
    parts = qualname.split(".")
    if not all(p.isidentifier() for p in parts) or qualname in DENIED:
        raise IRError(f"function name {qualname!r} is not allowed")
    if parts[0] == "builtins":
        if len(parts) != 2 or parts[1] not in SAFE_BUILTINS:
            raise IRError(f"builtin {qualname!r} is not in the allow-list {sorted(SAFE_BUILTINS)}")
        return getattr(builtins, parts[1])  # type: ignore[no-any-return]
    for prefix, ns in sorted(NAMESPACES, key=lambda p: -len(p[0])):
        if qualname.startswith(prefix + ".") and "." not in qualname[len(prefix) + 1:]:
            obj = getattr(ns, qualname[len(prefix) + 1:], None)
            if callable(obj):
                return obj  # type: ignore[no-any-return]
    raise IRError(f"function {qualname!r} is not in torchgraft's allow-list "
                  f"(namespaces: {', '.join(p for p, _ in NAMESPACES)}, builtins)")

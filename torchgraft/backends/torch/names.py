"""Identifiers for emitted code: unique, valid, never shadowing builtins, torch or each other.

Names that came from a model (attribute names, ModuleDict keys) never become code
as they are: they are either plain identifiers checked here, or string literals
written by ``str_lit`` (so quotes, newlines and anything else stay data).
"""

from __future__ import annotations

import builtins
import keyword
import re

from torch import nn

RESERVED = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {
    "self", "torch", "nn", "F", "Tensor", "math", "collections", "OrderedDict", "Path", "build", "load",
    "operator", "typing", "load_file",
}
# attributes nn.Module itself defines: a child with one of these names cannot be `self.<name>`
_MODULE_ATTRS = frozenset(n for n in dir(nn.Module) if not n.startswith("__"))


def is_plain_attr(name: str) -> bool:
    """True if ``self.<name>`` may be written for a child or parameter called ``name``."""
    return (name.isidentifier() and name.isascii() and not keyword.iskeyword(name)
            and name not in _MODULE_ATTRS and not name.startswith("__"))


class Namespace:
    """Hands out unique identifiers derived from candidate names (torch.fx's ``_Namespace`` idea)."""

    def __init__(self, taken: frozenset[str] | set[str] = frozenset()) -> None:
        self._used: set[str] = set(RESERVED) | set(taken)
        self._by_key: dict[object, str] = {}

    def name(self, candidate: str, key: object = None) -> str:
        """A fresh identifier close to ``candidate``; the same ``key`` always gets the same name."""
        if key is not None and key in self._by_key:
            return self._by_key[key]
        base = re.sub(r"\W", "_", candidate.encode("ascii", "ignore").decode()) or "v"
        if base[0].isdigit():
            base = "_" + base
        if keyword.iskeyword(base) or base in RESERVED:
            base = base + "_"
        out, i = base, 1
        while out in self._used:
            i += 1
            out = f"{base}{i}"
        self._used.add(out)
        if key is not None:
            self._by_key[key] = out
        return out

    def reserve(self, name: str) -> None:
        """Mark ``name`` as used."""
        self._used.add(name)

    def used(self) -> set[str]:
        """Every name handed out or reserved so far (a copy)."""
        return set(self._used)


def safe_doc(text: str) -> str:
    """Text that may go inside a docstring: ASCII letters, digits and ``_.<>-``; the rest becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.<>-]", "_", text)


def str_lit(text: str) -> str:
    """A string literal for text that came from a model: pure ASCII, escapes for everything else.

    Quoted as ruff's formatter prefers: double quotes, single ones where that needs fewer escapes.

    >>> print(str_lit("it's"), str_lit('say "hi"'))
    "it's" 'say "hi"'
    """
    quote = "'" if text.count('"') > text.count("'") else '"'
    body = text.encode("unicode_escape").decode("ascii")  # backslashes, control and non-ASCII escaped
    return quote + body.replace(quote, "\\" + quote) + quote


def member(owner: str, name: str, container: str | None = None) -> str:
    """Code that reads member ``name`` of ``owner``: ``self.conv1``, ``self.layers[0]``, ``self._modules['1st']``.

    ``container`` is the kind of owner: ``"Sequential"``/``"ModuleList"`` (int index),
    ``"ModuleDict"`` (string key), or None for an ordinary module.
    """
    if container in ("Sequential", "ModuleList") and name.isdigit():
        return f"{owner}[{int(name)}]"
    if container == "ModuleDict":
        return f"{owner}[{str_lit(name)}]"
    if is_plain_attr(name):
        return f"{owner}.{name}"
    return f"{owner}._modules[{str_lit(name)}]"

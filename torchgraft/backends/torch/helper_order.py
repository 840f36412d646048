"""The order copied helpers are written in ``model.py``: a class after the classes it derives from.

Helpers are kept sorted by name (``Model.helpers``); functions may refer to each other in any order
(names are looked up when called), but a ``class SSDMatcher(Matcher):`` statement needs ``Matcher``
defined above it.
"""

from __future__ import annotations

import ast

from torchgraft.ir.model import Helper, HelperKind


def _bases(helper: Helper) -> set[str]:
    try:
        tree = ast.parse(helper.source)
    except SyntaxError:
        return set()
    return {b.id for n in tree.body if isinstance(n, ast.ClassDef) for b in n.bases if isinstance(b, ast.Name)}


def in_definition_order(helpers: list[Helper]) -> list[Helper]:
    """``helpers`` in their order, each class moved after the helpers its bases name."""
    by_name = {h.name: h for h in helpers if h.kind is HelperKind.FUNCTION}
    out: list[Helper] = []
    placed: set[str] = set()

    def place(h: Helper, visiting: frozenset[str]) -> None:
        if h.key in placed or h.key in visiting:
            return
        for base in sorted(_bases(h)):
            if base in by_name:
                place(by_name[base], visiting | {h.key})
        placed.add(h.key)
        out.append(h)

    for h in helpers:
        place(h, frozenset())
    return out

"""Splitting constructor expressions nested too deeply for Python's parser into statements.

Python's parser refuses more than 200 nested parentheses, but eager PyTorch happily runs
``nn.Sequential(nn.Sequential(...))`` 200 deep. When an expression tree is deeper than
``MAX_NESTING`` levels, ``hoist`` moves its inner parts into local variables, innermost first::

    inner_1 = nn.Sequential(nn.Sequential(... nn.Linear(4, 4) ...))
    inner_2 = nn.Sequential(nn.Sequential(... inner_1 ...))
    return nn.Sequential(nn.Sequential(... inner_2 ...))

Every hoisted part is used exactly once, so module instances are never shared, and the
module tree (hence the state_dict keys) is exactly what the nested expression built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from torchgraft.backends.torch.ctor import Call, CExpr, Guarded, Items, Raw

MAX_NESTING = 40
"""Deepest expression tree written as one expression (a level opens at most four brackets)."""

CUT = 16
"""Height at which a part is moved into its own statement once an expression is too deep."""

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _children(e: CExpr) -> list[CExpr]:
    if isinstance(e, Call):
        return [*e.args, *(v for _, v in e.kwargs)]
    if isinstance(e, Items):
        return list(e.items)
    if isinstance(e, Guarded):
        return [e.expr]
    return []


def height(e: CExpr) -> int:
    """Levels of nested constructor expressions in ``e`` (a literal or name is 1)."""
    best, stack = 0, [(e, 1)]
    while stack:
        node, depth = stack.pop()
        best = max(best, depth)
        stack += [(c, depth + 1) for c in _children(node)]
    return best


def _words(e: CExpr) -> set[str]:
    """Names written by raw code and call heads in ``e`` (hoisted variables must not shadow them)."""
    out: set[str] = set()
    stack = [e]
    while stack:
        node = stack.pop()
        text = node.text if isinstance(node, Raw) else node.head if isinstance(node, Call) else None
        if isinstance(text, str):
            out |= set(_WORD.findall(text))
        stack += _children(node)
    return out


class _Hoister:
    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.count = 0
        self.parts: list[tuple[str, CExpr]] = []

    def fresh(self) -> str:
        while True:
            self.count += 1
            name = f"inner_{self.count}"
            if name not in self.taken:
                return name

    def visit(self, e: CExpr, top: bool = False) -> tuple[CExpr, int]:
        """``e`` with deep parts replaced by variable names, and its new height."""
        if isinstance(e, Call):
            args = [self.visit(a) for a in e.args]
            kwargs = [(k, self.visit(v)) for k, v in e.kwargs]
            new: CExpr = replace(e, args=tuple(a for a, _ in args), kwargs=tuple((k, v) for k, (v, _) in kwargs))
            h = 1 + max([h for _, h in args] + [h for _, (_, h) in kwargs], default=0)
        elif isinstance(e, Items):
            items = [self.visit(i) for i in e.items]
            new = replace(e, items=tuple(i for i, _ in items))
            h = 1 + max((h for _, h in items), default=0)
        elif isinstance(e, Guarded):
            inner, ih = self.visit(e.expr)
            return replace(e, expr=inner), ih + 1
        else:
            return e, 1
        if h < CUT or top:
            return new, h
        name = self.fresh()
        self.parts.append((name, new))
        return Raw(name), 1


def hoist(e: CExpr, avoid: Iterable[str]) -> tuple[list[tuple[str, CExpr]], CExpr]:
    """Statements ``(name, part)`` to run first, and ``e`` with those parts replaced by ``name``.

    Nothing is hoisted when ``e`` is at most ``MAX_NESTING`` deep. ``avoid``: names already
    in use where the statements go (constructor arguments); names ``e`` mentions are avoided too.
    The recursion here goes as deep as the module tree, as capture did.
    """
    if height(e) <= MAX_NESTING:
        return [], e
    h = _Hoister(set(avoid) | _words(e))
    new, _ = h.visit(e, top=True)
    return h.parts, new

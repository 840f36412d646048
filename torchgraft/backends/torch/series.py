"""Numbered children built in a loop: ``for i in range(num_layers): self.add_module(...)``.

A class whose instances hold different numbers of numbered children (DenseNet's ``denselayer1``
.. ``denselayerN``, ``rolled.py``) cannot list them one by one. When the children are calls of
one class whose integer arguments step evenly (``_DenseLayer(64)``, ``_DenseLayer(96)``, ...),
they become one ``series`` member, built the way the original constructor built them::

    for i in range(num_layers):
        self.add_module(f"denselayer{i + 1}", _DenseLayer(in_channels + 32 * i))

The count and the first value of each stepping argument are unified across instances like any
other literal (``unify.py``), so they become constructor arguments where they differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torchgraft.backends.torch.ctor import Call, CExpr, Lit, Raw

SERIES, AFFINE = "__series__", "__affine__"
_NUMBERED = re.compile(r"([A-Za-z_][A-Za-z_0-9]*?)(\d+)$")

Member3 = tuple[str, str, CExpr]
Render = Callable[[CExpr, Mapping[int, str], int], str]
"""``modules.render``: code for a constructor expression (passed in: modules imports classtext's users)."""


def _affine(values: list[CExpr], name: str) -> CExpr | None:
    """The common value, or ``AFFINE(first, step)`` for evenly stepping ints, or None."""
    if all(v == values[0] for v in values):
        return values[0]
    ints = [v.value for v in values if isinstance(v, Lit) and type(v.value) is int]
    if len(ints) != len(values):
        return None
    step = ints[1] - ints[0]
    if any(b - a != step for a, b in zip(ints, ints[1:], strict=False)):
        return None
    return Call(AFFINE, (Lit(ints[0]), Lit(step)), (), (name, f"{name}_step"))


def _template(calls: list[Call]) -> Call | None:
    first = calls[0]
    if any(c.head != first.head or len(c.args) != len(first.args) or [k for k, _ in c.kwargs] != [
            k for k, _ in first.kwargs] for c in calls):
        return None
    names = first.arg_names
    args = [_affine([c.args[i] for c in calls], names[i] if i < len(names) else f"arg{i}")
            for i in range(len(first.args))]
    kwargs = [(k, _affine([dict(c.kwargs)[k] for c in calls], k)) for k, _ in first.kwargs]
    if any(a is None for a in args) or any(v is None for _, v in kwargs):
        return None
    return Call(first.head, tuple(args), tuple(kwargs), first.arg_names, first.defaults)  # type: ignore[arg-type]


def count_name(prefix: str) -> str:
    """``num_layers`` for ``denselayer``, ``num_blocks`` for ``block``."""
    word = next((w for w in ("layer", "block", "stage", "unit") if prefix.lower().endswith(w)), prefix)
    return f"num_{word}s"


def series_members(members: list[Member3]) -> list[Member3]:
    """``members`` with the longest run of numbered child calls (two or more) as one series member."""
    kids = [(i, _NUMBERED.match(n), e) for i, (kind, n, e) in enumerate(members) if kind == "child"]
    best: tuple[int, int] | None = None
    for a, (_, m, _) in enumerate(kids):
        if m is None:
            continue
        b = a
        while (b + 1 < len(kids) and kids[b + 1][0] == kids[b][0] + 1 and kids[b + 1][1] is not None
               and kids[b + 1][1].group(1) == m.group(1)  # type: ignore[union-attr]
               and int(kids[b + 1][1].group(2)) == int(kids[b][1].group(2)) + 1):  # type: ignore[union-attr]
            b += 1
        if b > a and (best is None or b - a > best[1] - best[0]):
            best = (a, b)
    if best is None:
        return members
    run = kids[best[0]:best[1] + 1]
    calls = [e for _, _, e in run]
    if not all(isinstance(c, Call) for c in calls):
        return members
    template = _template(calls)  # type: ignore[arg-type]
    m0 = run[0][1]
    if template is None or m0 is None:
        return members
    prefix, start = m0.group(1), int(m0.group(2))
    expr = Call(SERIES, (Lit(len(run)), Lit(start), template), (), (count_name(prefix), "start", prefix))
    first, last = run[0][0], run[-1][0]
    return members[:first] + [("series", prefix, expr)] + members[last + 1:]


def _with_index(e: CExpr, names: Mapping[int, str], render: Render) -> CExpr:
    if isinstance(e, Call) and e.head == AFFINE:
        a, b = (render(x, names, 0) for x in e.args)
        term = "i" if b == "1" else f"{b} * i"
        return Raw(term if a == "0" else f"{a} + {term}")
    if isinstance(e, Call):
        return Call(e.head, tuple(_with_index(x, names, render) for x in e.args),
                    tuple((k, _with_index(v, names, render)) for k, v in e.kwargs), e.arg_names, e.defaults)
    return e


def series_text(prefix: str, expr: CExpr, names: Mapping[int, str], render: Render) -> str:
    """The loop registering a series member's children (``render``: ``modules.render``)."""
    assert isinstance(expr, Call) and expr.head == SERIES
    count, start, template = expr.args
    first = start.value if isinstance(start, Lit) else None
    index = "i" if first == 0 else f"i + {render(start, names, 0)}"
    element = render(_with_index(template, names, render), names, 12)
    return (f"for i in range({render(count, names, 0)}):\n"
            f'    self.add_module(f"{prefix}{{{index}}}", {element})')


__all__ = ["AFFINE", "SERIES", "count_name", "series_members", "series_text"]

"""A Block's forward method: its Graph, with a training branch when the modes differ."""

from __future__ import annotations

from collections.abc import Callable

from torchgraft.backends.torch.exprs import ExprContext
from torchgraft.backends.torch.forward import Special, annotation, graph_lines, input_names, signature
from torchgraft.backends.torch.wrap import WIDTH, wrap
from torchgraft.ir.graph import Graph
from torchgraft.ir.values import Ref


def body_lines(body: Graph, train: Graph | None, reach: Callable[[str], str], imports: set[str],
               reserved: frozenset[str] = frozenset(), special: Special | None = None,
               alt: tuple[str, Graph] | None = None) -> list[str]:
    """``def forward(...)`` and its statements, indented relative to the class body; ``alt``
    (condition, graph): another whole forward, run instead when the condition holds."""
    special = special or Special()
    inputs = tuple(i for i in body.inputs if i.name not in special.attrs)
    names = input_names(body, reserved, special)
    sig = signature(inputs, names, ExprContext({}, reach, imports))
    out = body.ops[-1].type if body.ops else None
    ret = annotation(out) if out is not None and _returns_last(body) else ""
    lines = wrap(f"def forward({sig})" + (f" -> {ret}:" if ret else ":"), WIDTH - 4)
    if train is not None:
        lines.append("    if self.training:")
        lines += ["        " + ln
                  for ln in graph_lines(train, reach, reserved, imports, Special(special.attrs), WIDTH - 12)]
    if alt is not None:
        lines.append(f"    if {alt[0]}:")
        lines += ["        " + ln
                  for ln in graph_lines(alt[1], reach, reserved, imports, Special(special.attrs), WIDTH - 12)]
    lines += ["    " + ln for ln in graph_lines(body, reach, reserved, imports, special, WIDTH - 8)]
    return lines


def _returns_last(g: Graph) -> bool:
    return bool(g.ops) and isinstance(g.output, Ref) and g.output.name == g.ops[-1].name

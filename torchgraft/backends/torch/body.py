"""A Block's forward method: its Graph (or combinator body), with a training branch when needed."""

from __future__ import annotations

from typing import Callable

from torchgraft.backends.torch.exprs import ExprContext
from torchgraft.backends.torch.forward import annotation, graph_lines, input_names, signature
from torchgraft.backends.torch.names import Namespace
from torchgraft.errors import EmitError
from torchgraft.ir.graph import Graph
from torchgraft.ir.nodes import Block


def body_lines(block: Block, reach: Callable[[str], str], imports: set[str],
               reserved: frozenset[str] = frozenset()) -> list[str]:
    """``def forward(...)`` and its statements, indented relative to the class body."""
    body = block.body
    if not isinstance(body, Graph):
        from torchgraft.backends.torch.combinators import combinator_graph

        body = combinator_graph(block)
    ns = Namespace(reserved)
    names = input_names(body, ns)
    sig = signature(body.inputs, names, ExprContext({}, reach, imports))
    out = body.ops[-1].type if body.ops else None
    ret = annotation(out) if out is not None and _returns_last(body) else ""
    head = f"def forward({sig})" + (f" -> {ret}:" if ret else ":")
    lines = [head]
    if block.train_body is not None:
        if not isinstance(block.train_body, Graph):
            raise EmitError(f"Block<{block.cls.name}> train_body must be a Graph")
        lines.append("    if self.training:")
        tns = Namespace(reserved)
        input_names(block.train_body, tns)
        lines += ["        " + ln for ln in graph_lines(block.train_body, reach, tns, imports)]
    lines += ["    " + ln for ln in graph_lines(body, reach, ns, imports)]
    return lines


def _returns_last(g: Graph) -> bool:
    from torchgraft.ir.values import Ref

    return bool(g.ops) and isinstance(g.output, Ref) and g.output.name == g.ops[-1].name

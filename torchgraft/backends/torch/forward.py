"""A Block's forward body (Graph) as readable Python statements.

A value used once, by the very next op, is written inline (``self.bn1(self.conv1(x))``),
which keeps the original evaluation order exactly; everything else gets a name.
"""

from __future__ import annotations

from typing import Callable

from torchgraft.backends.torch.exprs import Code, ExprContext, arg_code, op_code
from torchgraft.backends.torch.names import Namespace
from torchgraft.ir.graph import FunctionCall, GetAttr, Graph, Input, InputKind
from torchgraft.ir.types import ScalarType, TensorType, ValueType
from torchgraft.ir.values import Ref, refs_in

MAX_INLINE = 72


def annotation(t: ValueType) -> str:
    """A type annotation for a value type (``Tensor``, ``int``, ...), "" when unknown."""
    if isinstance(t, TensorType):
        return "Tensor"
    if isinstance(t, ScalarType) and t.name in ("int", "float", "bool", "str"):
        return t.name
    return ""


def signature(inputs: tuple[Input, ...], names: dict[str, str], ctx: ExprContext) -> str:
    """``self, x: Tensor, mask: Tensor | None = None`` for the forward's inputs."""
    parts = ["self"]
    star = False
    for inp in inputs:
        ann = annotation(inp.type)
        text = names[inp.name] + (f": {ann}" if ann else "")
        if inp.kind is InputKind.VAR_POSITIONAL:
            text, star = "*" + text, True
        elif inp.kind is InputKind.VAR_KEYWORD:
            text = "**" + text
        elif inp.kind is InputKind.KEYWORD and not star:
            parts.append("*")
            star = True
        if inp.default is not None and inp.kind in (InputKind.POSITIONAL, InputKind.KEYWORD):
            text += f" = {arg_code(inp.default, ctx).text}" if ann else f"={arg_code(inp.default, ctx).text}"
        parts.append(text)
    return ", ".join(parts)


def graph_lines(g: Graph, accessor: Callable[[str], str], ns: Namespace, imports: set[str]) -> list[str]:
    """Statements computing ``g`` (ending in ``return``), without indentation."""
    users = g.users()
    ctx = ExprContext({}, accessor, imports)
    for inp in g.inputs:
        ctx.values[inp.name] = Code(ns.name(inp.name, key=("in", inp.name)))
    lines: list[str] = []
    for i, op in enumerate(g.ops):
        code = op_code(op, ctx)
        uses = users.get(op.name, [])
        nxt = g.ops[i + 1].name if i + 1 < len(g.ops) else "<output>"
        out_is_ref = isinstance(g.output, Ref) and g.output.name == op.name
        pure = isinstance(op.target, GetAttr) or (isinstance(op.target, FunctionCall)
                                                   and op.target.qualname == "builtins.getattr")
        inline = len(uses) == 1 and (uses[0] == nxt or pure) and len(code.text) <= MAX_INLINE
        if nxt == "<output>" and out_is_ref:
            inline = len(uses) == 1
        if not uses:
            lines.append(code.text)
            ctx.values[op.name] = Code("None")
            continue
        if inline and (nxt != "<output>" or out_is_ref or refs_in(g.output).count(op.name) == 1):
            ctx.values[op.name] = code
            continue
        var = ns.name(op.name, key=("op", op.name))
        lines.append(f"{var} = {code.text}")
        ctx.values[op.name] = Code(var)
    lines.append(f"return {arg_code(g.output, ctx).text}")
    return lines


def input_names(g: Graph, ns: Namespace) -> dict[str, str]:
    """The emitted names of the graph's inputs (reserved before the body is written)."""
    return {i.name: ns.name(i.name, key=("in", i.name)) for i in g.inputs}

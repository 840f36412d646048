"""Combinator bodies (Chain/Parallel/SkipConnection over child refs) lowered to Graphs.

Hand-built Blocks describe their forward with combinators; lowering them to a Graph
lets one code path write every forward.
"""

from __future__ import annotations

from torchgraft.errors import EmitError
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, Op, PrimCall
from torchgraft.ir.nodes import Block, Chain, ChildRef, CombineKind, Node, Parallel, SkipConnection
from torchgraft.ir.primitives import Activation
from torchgraft.ir.values import Const, Ref, Seq

_COMBINE_FN = {CombineKind.ADD: "operator.add", CombineKind.MUL: "operator.mul"}


class _Lowering:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.count: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        base = base.replace(".", "_") or "v"
        n = self.count.get(base, 0)
        self.count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def emit(self, base: str, target: ChildCall | FunctionCall | PrimCall, *args: Ref | Seq | Const) -> str:
        name = self.fresh(base)
        self.ops.append(Op(name, target, tuple(args)))
        return name

    def combine(self, kind: CombineKind, dim: int, values: list[str]) -> str:
        if kind is CombineKind.CONCAT:
            return self.emit("cat", FunctionCall("torch.cat"), Seq(tuple(Ref(v) for v in values), True), Const(dim))
        acc = values[0]
        for v in values[1:]:
            acc = self.emit(kind.value, FunctionCall(_COMBINE_FN[kind]), Ref(acc), Ref(v))
        return acc

    def lower(self, node: Node, x: str) -> str:
        if isinstance(node, ChildRef):
            return self.emit(node.path, ChildCall(node.path), Ref(x))
        if isinstance(node, Activation):
            return self.emit(node.kind.functional, PrimCall(node), Ref(x))
        if isinstance(node, Chain):
            for item in node.items:
                x = self.lower(item, x)
            return x
        if isinstance(node, SkipConnection):
            y = self.lower(node.body, x)
            return self.combine(node.combine.kind, node.combine.dim, [x, y])  # type: ignore[arg-type]
        if isinstance(node, Parallel):
            vals = [self.lower(b, x) for b in node.branches]
            return self.combine(node.combine.kind, node.combine.dim, vals)  # type: ignore[arg-type]
        raise EmitError(f"{type(node).__name__} cannot appear inside a Block body; "
                        "use ChildRef for stateful children")


def lower_body(body: Node) -> Graph:
    """The Graph equivalent of a combinator body with one input ``x``."""
    lw = _Lowering()
    lw.count["x"] = 1
    out = lw.lower(body, "x")
    return Graph((Input("x"),), tuple(lw.ops), Ref(out))


def combinator_graph(block: Block) -> Graph:
    """The forward Graph of a Block whose body is a combinator tree."""
    return lower_body(block.body)


RUNTIME_CLASSES = {
    "SkipConnection": '''class SkipConnection(nn.Module):
    """combine(x, body(x)), with combine one of add, mul, cat."""

    def __init__(self, body: nn.Module, combine: str = "add", dim: int = 1) -> None:
        super().__init__()
        self.body = body
        self.combine = combine
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.combine == "cat":
            return torch.cat([x, y], self.dim)
        return x * y if self.combine == "mul" else x + y
''',
    "Parallel": '''class Parallel(nn.ModuleList):
    """Runs every branch on the same input and joins the results (add, mul or cat)."""

    def __init__(self, branches: list[nn.Module], combine: str = "add", dim: int = 1) -> None:
        super().__init__(branches)
        self.combine = combine
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self]
        if self.combine == "cat":
            return torch.cat(outs, self.dim)
        result = outs[0]
        for out in outs[1:]:
            result = result * out if self.combine == "mul" else result + out
        return result
''',
}

"""Combinator bodies (Chain/Parallel/SkipConnection over child refs) lowered to Graphs.

Hand-built Blocks describe their forward with combinators; lowering them to a Graph
lets one code path write every forward.
"""

from __future__ import annotations

from torchgraft.errors import EmitError
from torchgraft.ir.combine import Combine, CombineKind, combine_ops
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, Op, PrimCall
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, Parallel, SkipConnection
from torchgraft.ir.primitives import Activation
from torchgraft.ir.values import Const, Ref, Seq


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

    def combine(self, how: Combine, values: list[str]) -> str:
        ops, out = combine_ops(how, values, self.fresh)
        self.ops += ops
        return out

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
            return self.combine(node.combine, [x, y])
        if isinstance(node, Parallel):
            vals = [self.lower(b, x) for b in node.branches]
            return self.combine(node.combine, vals)
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


_COMBINES = "(" + ", ".join(f'"{k.value}"' for k in CombineKind if k is not CombineKind.CALL) + ")"
COMBINE_TYPE = "str | Callable[[Tensor, Tensor], Tensor]"
"""The runtime classes' ``combine`` argument: a kind name, or a function of two tensors folded left."""

_JOIN = '''
    def join(self, values: list[Tensor]) -> Tensor:
        """Joins values: a function f folds left (f(f(v0, v1), v2)), as do add, sub, mul, max, min
        (v0 - v1 - ...); mean is the sum over the count; cat and stack join along self.dim."""
        if callable(self.combine):
            out = values[0]
            for value in values[1:]:
                out = self.combine(out, value)
            return out
        if self.combine == "cat":
            return torch.cat(values, self.dim)
        if self.combine == "stack":
            return torch.stack(values, self.dim)
        out = values[0]
        for value in values[1:]:
            if self.combine in ("add", "mean"):
                out = out + value
            elif self.combine == "sub":
                out = out - value
            elif self.combine == "mul":
                out = out * value
            elif self.combine == "max":
                out = torch.maximum(out, value)
            elif self.combine == "min":
                out = torch.minimum(out, value)
            else:
                raise ValueError(f"unknown combine {self.combine!r}")
        return out / len(values) if self.combine == "mean" else out
'''

_CHECK = '''        if not callable(combine) and combine not in self.COMBINES:
            raise ValueError(f"unknown combine {combine!r}; use one of {self.COMBINES} or a function of two tensors")
'''

RUNTIME_CLASSES = {
    "SkipConnection": '''class SkipConnection(nn.Module):
    """combine(x, body(x)): add, sub (x - body(x)), mul, max, min, mean, cat or stack (along dim), or a
    function of two tensors, called as combine(x, body(x))."""

    COMBINES = ''' + _COMBINES + '''

    def __init__(self, body: nn.Module, combine: ''' + COMBINE_TYPE + ''' = "add", dim: int = 1) -> None:
        super().__init__()
''' + _CHECK + '''        self.body = body
        self.combine = combine
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.join([x, self.body(x)])
''' + _JOIN,
    "Parallel": '''class Parallel(nn.ModuleDict):
    """Runs every branch on the same input and joins the results (add, sub, mul, max, min, mean, cat, stack,
    or a function of two tensors folded left: f(f(b0, b1), b2)).

    Branches given as a list are named "0", "1", ...; as an nn.ModuleDict, by its keys.
    """

    COMBINES = ''' + _COMBINES + '''

    def __init__(
        self, branches: list[nn.Module] | nn.ModuleDict, combine: ''' + COMBINE_TYPE + ''' = "add", dim: int = 1
    ) -> None:
        super().__init__({str(i): b for i, b in enumerate(branches)} if isinstance(branches, list) else branches)
''' + _CHECK + '''        self.combine = combine
        self.dim = dim

    def __getitem__(self, key: str | int) -> nn.Module:
        return super().__getitem__(str(key))

    def forward(self, x: Tensor) -> Tensor:
        return self.join([branch(x) for branch in self.values()])
''' + _JOIN,
}

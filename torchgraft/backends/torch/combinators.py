"""The runtime combinator classes (``SkipConnection``, ``Parallel``) written into model.py.

Combinator bodies of Blocks are lowered to Graphs by ``ir.lower.block_graph`` (the one lowering), so
one code path writes every forward.
"""

from __future__ import annotations

from torchgraft.ir.combine import CombineKind

__all__ = ["COMBINE_TYPE", "RUNTIME_CLASSES"]


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
        if self.in_place:  # out += v: the result keeps the first value's dtype and shape
            out = values[0]
            for value in values[1:]:
                if self.combine == "add":
                    out += value
                else:
                    out *= value
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
        if in_place and combine not in ("add", "mul"):
            raise ValueError(f"only add and mul join in place, not {combine!r}")
        self.in_place = in_place
'''

RUNTIME_CLASSES = {
    "SkipConnection": '''class SkipConnection(nn.Module):
    """combine(x, body(x)): add, sub (x - body(x)), mul, max, min, mean, cat or stack (along dim), or a
    function of two tensors, called as combine(x, body(x)). in_place (add, mul): out = body(x); out += x."""

    COMBINES = ''' + _COMBINES + '''

    def __init__(
        self, body: nn.Module, combine: ''' + COMBINE_TYPE + ''' = "add", dim: int = 1, in_place: bool = False
    ) -> None:
        super().__init__()
''' + _CHECK + '''        self.body = body
        self.combine = combine
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.join([self.body(x), x] if self.in_place else [x, self.body(x)])
''' + _JOIN,
    "Parallel": '''class Parallel(nn.ModuleDict):
    """Runs every branch on the same input and joins the results (add, sub, mul, max, min, mean, cat, stack,
    or a function of two tensors folded left: f(f(b0, b1), b2)); in_place (add, mul) writes into b0's result.

    Branches given as a list are named "0", "1", ...; as an nn.ModuleDict, by its keys.
    """

    COMBINES = ''' + _COMBINES + '''

    def __init__(
        self,
        branches: list[nn.Module] | nn.ModuleDict,
        combine: ''' + COMBINE_TYPE + ''' = "add",
        dim: int = 1,
        in_place: bool = False,
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

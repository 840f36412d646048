"""Statements that stand for several ops: re-rolled loops and sizes read together.

A mixin of the forward writer (``forward._Writer``): ``for layer in self.layers:`` for a run of
item calls (``loops.py``), ``features.append(layer(features))`` for a run that grows a list, and
``n, c, h, w = x.shape`` for a tensor's sizes read one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchgraft.backends.torch.exprs import POSTFIX, Code, ExprContext, arg_code, op_code
from torchgraft.backends.torch.loops import GETITEM, Loop, carried_ref, item_name, iteration
from torchgraft.backends.torch.valnames import GENERIC, ValueNamer, chosen, source_name
from torchgraft.backends.torch.wrap import wrap
from torchgraft.ir.graph import Graph, MethodCall, Op
from torchgraft.ir.values import Const, Ref, Seq

if TYPE_CHECKING:
    from torchgraft.backends.torch.forward import Special


class GroupedStatements:
    """The writer's methods for statements covering several ops (its state is declared here)."""

    g: Graph
    ctx: ExprContext
    special: Special
    namer: ValueNamer
    users: dict[str, list[str]]
    ranks: dict[str, int]
    shapes: dict[str, int]
    in_loop: set[str]
    depth: dict[str, int]
    width: int
    pos: int

    def _consume(self, op: Op) -> None:
        raise NotImplementedError

    def _dead(self, value: str) -> bool:
        raise NotImplementedError

    def _name(self, i: int, op: Op, reads: list[str]) -> str:
        raise NotImplementedError

    def _loop(self, loop: Loop) -> list[str]:
        """``for layer in self.layers:`` and the one call it repeats (``loops.py``)."""
        if loop.grows is not None:
            return self._growing(loop, loop.grows)
        first, last = self.g.ops[loop.first], self.g.ops[loop.last]
        carried = carried_ref(loop, first)
        incoming = self.ctx.values[carried].text
        self.pos = loop.first
        reuse = incoming.isidentifier() and self._dead(carried) and carried not in self.special.attrs
        self.pos = loop.last
        var = (self.namer.take(last.name, incoming) if reuse
               else self.namer.pick(last.name, [chosen(last) or "", source_name(last), "hidden", GENERIC]))
        item = item_name(loop.container, lambda n: not self.namer.free(n) or n == var)
        path = first.target.path  # type: ignore[union-attr]
        ctx = ExprContext({**self.ctx.values, carried: Code(var)},
                          lambda p: item if p == path else self.ctx.accessor(p), self.ctx.imports)
        call = op_code(first, ctx).text + ("" if loop.unpack is None else f"[{loop.unpack}]")
        for op in self.g.ops[loop.first:loop.last + 1]:
            self._consume(op)
            self.depth[op.name] = 0
        self.ctx.values[last.name] = Code(var)
        head = [] if reuse else wrap(f"{var} = {incoming}", self.width)
        container = "self" if not loop.container else self.ctx.accessor(loop.container)
        return head + [f"for {item} in {iteration(loop, container)}:"] + [
            "    " + ln for ln in wrap(f"{var} = {call}", self.width - 4)]

    def _size_run(self, i: int) -> int:
        """How many ops from ``i`` on read ``x.size(0)``, ``x.size(1)``... of one tensor, each used twice or more."""
        first = self.g.ops[i]
        src = first.args[0] if first.args else None
        if not isinstance(src, Ref) or src.name not in self.ranks or self.special.flag is not None:
            return 0
        if first.target == MethodCall("size") and len(first.args) == 1 and not first.kwargs:
            return self._size_items(i, src)
        k = 0
        while (i + k < len(self.g.ops) and k < self.ranks[src.name]
               and self.g.ops[i + k].target == MethodCall("size") and not self.g.ops[i + k].kwargs
               and self.g.ops[i + k].args == (src, Const(k)) and len(self.users.get(self.g.ops[i + k].name, [])) > 1
               and self.g.ops[i + k].name not in self.in_loop):
            k += 1
        return k

    def _size_items(self, i: int, src: Ref) -> int:
        """``size = x.size()`` then ``size[0]``, ``size[1]``... (each its only use): 1 + their number, or 0."""
        size = self.g.ops[i].name
        uses = self.users.get(size, [])
        k = 0
        while (i + 1 + k < len(self.g.ops) and self.g.ops[i + 1 + k].target == GETITEM
               and self.g.ops[i + 1 + k].args == (Ref(size), Const(k)) and not self.g.ops[i + 1 + k].kwargs
               and self.users.get(self.g.ops[i + 1 + k].name)):
            k += 1
        return 1 + k if k > 1 and len(uses) == k and k <= self.ranks[src.name] else 0

    def _unpack(self, i: int, count: int) -> list[str]:
        """``n, c, h, w = x.shape`` (or ``batch, seq_len = x.shape[:2]``) for a run of size reads."""
        ops = self.g.ops[i:i + count]
        src = ops[0].args[0]
        assert isinstance(src, Ref)
        if len(ops[0].args) == 1:  # ``size = x.size()`` read item by item: the items are the sizes
            self._consume(ops[0])
            self.shapes[ops[0].name] = self.ranks[src.name]  # so the items are named n, c, h, w
            ops, i, count = ops[1:], i + 1, count - 1
        names = []
        for k, op in enumerate(ops):
            self.pos = i + k
            self._consume(op)
            self.depth[op.name] = 0
            names.append(self._name(i + k, op, []))
            self.ctx.values[op.name] = Code(names[-1])
        whole = count == self.ranks[src.name]
        shape = f"{arg_code(src, self.ctx).wrap(POSTFIX)}.shape" + ("" if whole else f"[:{count}]")
        return wrap(f"{', '.join(names)} = {shape}", self.width)

    def _growing(self, loop: Loop, whole: Seq) -> list[str]:
        """``features = [x]``, then ``for layer in self.children(): features.append(layer(features))``."""
        first, last = self.g.ops[loop.first], self.g.ops[loop.last]
        start = arg_code(whole.items[0], self.ctx).text
        self.pos = loop.last
        var = self.namer.pick(last.name, ["features", "outputs", GENERIC])
        item = item_name(loop.container, lambda n: not self.namer.free(n) or n == var)
        path = first.target.path  # type: ignore[union-attr]
        self.ctx.lists[whole] = var
        for op in self.g.ops[loop.first:loop.last + 1]:
            self._consume(op)
            self.depth[op.name] = 0
            self.ctx.values[op.name] = Code(var)  # never read on its own (``find_loops`` checked)
        ctx = ExprContext({**self.ctx.values}, lambda p: item if p == path else self.ctx.accessor(p),
                          self.ctx.imports, {Seq(whole.items[:1], True): var})
        container = "self" if not loop.container else self.ctx.accessor(loop.container)
        call = op_code(first, ctx).text
        return [f"{var} = [{start}]", f"for {item} in {iteration(loop, container)}:", f"    {var}.append({call})"]

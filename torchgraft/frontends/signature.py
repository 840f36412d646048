"""Honest signatures: the emitted model's ``forward`` accepts only arguments whose effect it keeps.

An argument every example left None (``token_type_ids``), or ``**kwargs`` every example left
empty, is read by nothing but its own guard. In the model's top-level forward such a
parameter is removed, so a call that passes it fails with Python's own ``TypeError``
(unexpected keyword argument) instead of being accepted. Parameters after a removed
positional one become keyword-only, so no positional call binds to the wrong one.
Inner blocks keep their parameters (their parents pass them), guarded.
"""

from __future__ import annotations

from dataclasses import replace

from torchgraft.ir.graph import FunctionCall, Graph, Guard, Input, InputKind
from torchgraft.ir.nodes import Block
from torchgraft.ir.values import Const, Ref

_NONE_CHECK = FunctionCall("operator.is_")
_COUNT, _EQ = FunctionCall("builtins.len"), FunctionCall("operator.eq")


def _guard_only(g: Graph, inp: Input) -> set[str] | None:
    """The ops that only check ``inp`` was absent (``inp is None``, ``len(inp) == 0`` and their guards),
    when nothing else reads it; None otherwise."""
    ops = {op.name: op for op in g.ops}
    users = g.users()
    found: set[str] = set()
    for first in users.get(inp.name, []):
        op = ops.get(first)
        if op is None:
            return None
        if op.target == _COUNT and op.args == (Ref(inp.name),):
            found.add(op.name)
            checks = [ops.get(u) for u in users.get(op.name, [])]
            if not checks or any(c is None or c.target != _EQ or c.args != (Ref(op.name), Const(0)) for c in checks):
                return None
        elif op.target == _NONE_CHECK and op.args == (Ref(inp.name), Const(None)):
            checks = [op]
        else:
            return None
        for check in checks:
            assert check is not None
            guards = [ops.get(u) for u in users.get(check.name, [])]
            if not guards or any(gd is None or not isinstance(gd.target, Guard) for gd in guards):
                return None
            found |= {check.name} | {gd.name for gd in guards if gd is not None}
    return found


def _without(g: Graph, drop: set[str], dead: set[str]) -> Graph:
    inputs: list[Input] = []
    keyword_only = False
    for inp in g.inputs:
        if inp.name in drop:
            keyword_only = keyword_only or inp.kind is InputKind.POSITIONAL
            continue
        if keyword_only and inp.kind is InputKind.POSITIONAL:
            inp = replace(inp, kind=InputKind.KEYWORD)
        inputs.append(inp)
    return Graph(tuple(inputs), tuple(op for op in g.ops if op.name not in dead), g.output)


def honest_root(block: Block) -> Block:
    """``block`` (the model's root) without the parameters every example left None or empty."""
    if not isinstance(block.body, Graph):
        return block
    bodies = [b for b in (block.body, block.train_body) if isinstance(b, Graph)]
    drop: set[str] = set()
    dead: set[str] = set()
    for inp in block.body.inputs:
        absent = inp.default == Const(None) or inp.kind in (InputKind.VAR_KEYWORD, InputKind.VAR_POSITIONAL)
        found = [_guard_only(b, inp) for b in bodies]
        if absent and all(f for f in found) and all(inp in b.inputs for b in bodies):
            drop.add(inp.name)
            dead |= {n for f in found if f for n in f}
    if not drop:
        return block
    train = block.train_body
    return replace(block, body=_without(block.body, drop, dead),
                   train_body=_without(train, drop, dead) if isinstance(train, Graph) else train)


__all__ = ["honest_root"]



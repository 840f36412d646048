"""Guard messages of a class shared by several instances: one message naming all of them.

A guard's message starts with the module it belongs to (``layers.0.self_attn (LlamaAttention) was
captured with ...``). Instances of one class differ only in that path, so forwards are compared
without it (``message_key``) and the class's message names every instance at once
(``layers.*.self_attn``): the error still says where, and eight decoder layers make one class.
"""

from __future__ import annotations

import dataclasses
import re

from torchgraft.ir.graph import Graph, Guard

_WHERE = re.compile(r"^(\S+) \(")


def message_key(message: str) -> str:
    """``message`` without the module path it starts with (what instances of one class share)."""
    return _WHERE.sub("(", message, count=1)


def path_pattern(paths: list[str]) -> str:
    """One text for several module paths: ``layers.*.mlp`` when they differ in whole parts only,
    else the first three joined (``a.b, c, d and 2 others``)."""
    shown = [p or "<root>" for p in dict.fromkeys(paths)]
    if len(shown) == 1:
        return shown[0]
    split = [p.split(".") for p in shown]
    if len({len(s) for s in split}) == 1:
        return ".".join(parts[0] if len(set(parts)) == 1 else "*" for parts in zip(*split))
    rest = len(shown) - 3
    return ", ".join(shown[:3]) + (f" and {rest} other{'s' if rest > 1 else ''}" if rest > 0 else "")


def shared_messages(g: Graph | None, paths: list[str]) -> Graph | None:
    """``g`` with each guard message's leading module path replaced by the pattern of ``paths`` (also for
    one instance: a model composed under a prefix names its guards by their new paths, ``enc.g``)."""
    if g is None or not paths:
        return g
    pattern = path_pattern(paths)
    ops = tuple(dataclasses.replace(op, target=dataclasses.replace(
                    op.target, message=_WHERE.sub(lambda m: f"{pattern} (", op.target.message, count=1)))
                if isinstance(op.target, Guard) else op for op in g.ops)
    return dataclasses.replace(g, ops=ops)

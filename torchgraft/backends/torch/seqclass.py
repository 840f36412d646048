"""``nn.Sequential`` subclasses written as their own class (``class _Transition(nn.Sequential):``).

A Chain that records the subclass it was captured from (``Chain.cls``) computes what
``nn.Sequential`` computes, so its class has no ``forward``: only an ``__init__`` building the
items. The items of every instance are anti-unified like a Block's members (``unify.py``):
literals that differ become constructor arguments (``params.py``), and numbered items only
some instances have are written ``*([layer] if use_norm else [])``. Items keep their keys:

- numbered items (``"0"``, ``"1"``, ...) are passed to ``super().__init__(...)`` in order;
- named items are assigned after ``super().__init__()`` (``self.norm = ...``; ``add_module``
  for a name that is not a plain attribute), which ``nn.Sequential`` keeps in that order.

When the instances cannot share one class with literal arguments (their items differ in kind,
or named items differ between instances), every instance is written as the plain
``nn.Sequential`` it is (same keys, same calls): never one class per shape.

>>> sequential_items(chain, "features.transition1", call_of)   # doctest: +SKIP
Items(kind='Sequential', keys=('norm', 'relu', 'conv', 'pool'), items=(...))
"""

from __future__ import annotations

from collections.abc import Mapping

from torchgraft.backends.torch.classtext import Member, member_lines, signature_text
from torchgraft.backends.torch.ctor import Call, ClassCall, Items, node_expr
from torchgraft.backends.torch.modules import render
from torchgraft.backends.torch.names import safe_doc
from torchgraft.backends.torch.params import ParamSpec, build_params
from torchgraft.backends.torch.unify import Unifier
from torchgraft.ir.nodes import Block, ClassRef
from torchgraft.ir.traverse import join


def sequential_items(block: Block, path: str, call_of: ClassCall) -> Items:
    """The items of the subclass instance at ``path`` (``groups.seq_block``) as one expression.

    >>> sequential_items(seq_block(chain), "features.transition1", table.call_of)   # doctest: +SKIP
    """
    return Items("Sequential", tuple(n for n, _ in block.children),
                 tuple(node_expr(c, join(path, n), call_of) for n, c in block.children))


def unified(items: list[Items]) -> tuple[Items, Unifier] | None:
    """The items of every instance generalised into one expression and its holes; None when the
    instances cannot share a class whose arguments are literals (then they stay ``nn.Sequential``).

    >>> unified([sequential_items(b, p, call_of) for p, b in group.insts])   # doctest: +SKIP
    """
    u = Unifier(len(items))
    merged = u.unify(list(items), ("layers", "layers"))
    if not isinstance(merged, Items) or not all(h.literal for h in u.holes):
        return None
    return merged, u


def arguments(u: Unifier, taken: set[str]) -> tuple[list[ParamSpec], dict[int, str]]:
    """The constructor arguments for the holes, and each hole's argument name."""
    specs, index = build_params(u.holes, taken)
    return specs, {h: specs[index[h]].name for h in range(len(u.holes))}


def _numbered(keys: tuple[str, ...]) -> bool:
    return list(keys) == [str(i) for i in range(len(keys))]


def init_lines(items: Items, names: Mapping[int, str]) -> list[str]:
    """``__init__``'s statements: ``super().__init__(*items)`` for numbered items, else ``super().__init__()``
    and one assignment per item."""
    if _numbered(items.keys) and items.items:
        return [render(Call("super().__init__", items.items), names, 8)]
    out = ["super().__init__()"]
    for key, expr in zip(items.keys, items.items, strict=True):
        out += member_lines(Member("child", key, expr), names)
    return out


def sequential_text(name: str, cls: ClassRef, items: Items, specs: list[ParamSpec], names: Mapping[int, str],
                    extra: list[str]) -> str:
    """The class definition: ``class <name>(nn.Sequential):`` with its ``__init__`` (no forward)."""
    lines = [f"class {name}(nn.Sequential):", f'    """From {safe_doc(str(cls))}."""']
    init = init_lines(items, names) + extra
    if specs or init != ["super().__init__()"]:
        lines += ["", signature_text(specs)] + [f"        {ln}" for stmt in init for ln in stmt.split("\n")]
    return "\n".join(lines) + "\n"

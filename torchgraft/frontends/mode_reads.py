"""Reads of the training flag that a trace cannot keep: the forward's source must be copied instead.

Capture traces a forward with a probe in place of ``self.training`` (or once per mode), which sees
``if self.training:`` and ``F.dropout(x, p, self.training)``. It cannot see:

- an identity test or a type test of the flag: ``self.training is True``, ``isinstance(self.training, bool)``,
  ``repr``/``str``/``id``/``hash`` of it, an f-string (the probe is never ``True``; the trace would take one
  branch silently);
- a child's flag: ``self.bn.training`` is a real bool while tracing, baked in for both modes.

>>> class M(nn.Module):
...     def forward(self, x):
...         return x * 2 if self.training is True else x
>>> hidden_mode_reads(M())
['self.training is compared by identity (is / is not)']
"""

from __future__ import annotations

import ast
import functools

from torch import nn

from torchgraft.frontends.state import method_tree

_OPAQUE_CALLS = frozenset({"isinstance", "type", "repr", "str", "id", "hash", "format", "issubclass"})


def _chain(node: ast.Attribute) -> list[str] | None:
    """``["bn", "training"]`` for ``self.bn.training``; None when it does not start at ``self``."""
    parts: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    return parts[::-1] if isinstance(cur, ast.Name) and cur.id == "self" else None


def _why(node: ast.Attribute, parent: ast.AST | None) -> str | None:
    chain = _chain(node)
    if chain is None or chain[-1] != "training":
        return None
    if len(chain) > 1:
        return f"self.{'.'.join(chain)} (a child's mode flag) is read"
    if isinstance(parent, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in parent.ops):
        return "self.training is compared by identity (is / is not)"
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in _OPAQUE_CALLS:
        return f"self.training is passed to {parent.func.id}()"
    if isinstance(parent, ast.FormattedValue):
        return "self.training is formatted into a string"
    return None


def hidden_mode_reads(mod: nn.Module) -> list[str]:
    """How ``mod``'s forward reads a training flag in a way tracing cannot keep (see the module docstring);
    empty when it does not, or when its source cannot be read (the probe then decides, as before)."""
    return list(_of(getattr(type(mod), "forward", None)))


@functools.lru_cache(maxsize=1024)
def _of(forward: object) -> tuple[str, ...]:
    try:
        tree = method_tree(forward)
    except Exception:  # noqa: BLE001 - no source (a builtin, a C extension): nothing to read
        return ()
    if tree is None or "training" not in ast.dump(tree):
        return ()
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = [_why(n, parents.get(n)) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    return tuple(dict.fromkeys(w for w in found if w is not None))

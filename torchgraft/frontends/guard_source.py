"""Reading the source of a guarded comparison: ``if n != x.shape[0]: x = x.expand(n, -1)`` skips only an identity.

transformers' mask code (``masking_utils.py``) writes::

    if batch_size != position_ids.shape[0]:
        position_ids = position_ids.expand(batch_size, -1)

Traced at batch 2 the comparison holds; at batch 1 the forward skips the assignment. When the ``if``
statement is exactly that (no ``else``, one assignment rebinding the compared tensor to its expand at
the compared size, ``-1`` for every other dim), the other outcome runs the same program without an
expand that is the identity there, provided the tensor has as many dims as sizes given. The flipped
trace cannot show this when the data it runs on no longer fits (the tensor stays batch 1 while the
rest is batch 2), so the source says it instead: ``skipped_expand`` reads the ``if`` at the guard's
site (the file is parsed, never run) and returns the tensor's name and rank, or None.

>>> skipped_expand("/site-packages/transformers/masking_utils.py:868")   # doctest: +SKIP
(1, 2)
"""

from __future__ import annotations

import ast
import functools
import linecache


@functools.lru_cache(maxsize=64)
def _ifs(filename: str) -> dict[int, ast.If]:
    """The ``if`` statements of a source file by line number (empty when it cannot be read or parsed)."""
    text = "".join(linecache.getlines(filename))
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    return {node.lineno: node for node in ast.walk(tree) if isinstance(node, ast.If)}


def _first_size(node: ast.expr, name: str) -> bool:
    """``name.shape[0]`` or ``name.size(0)``."""
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "shape":
        return _is_name(node.value.value, name) and _is_int(node.slice, 0)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "size":
        return _is_name(node.func.value, name) and len(node.args) == 1 and not node.keywords \
            and _is_int(node.args[0], 0)
    return False


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_int(node: ast.expr, value: int) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _is_int(node.operand, -value)
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value == value


def skipped_expand(site: str) -> tuple[int, int] | None:
    """(side, number of sizes) when the ``if`` at ``site`` (``file.py:line``) is ``if n != x.shape[0]:
    x = x.expand(n, -1, ...)`` with nothing else in it (``side``: 0 when ``x.shape[0]`` is on the left of
    ``!=``, 1 on the right); None otherwise."""
    filename, _, line = site.rpartition(":")
    if not line.isdigit():
        return None
    stmt = _ifs(filename).get(int(line))
    if stmt is None or stmt.orelse or len(stmt.body) != 1 or not isinstance(stmt.body[0], ast.Assign):
        return None
    test, body = stmt.test, stmt.body[0]
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.NotEq)):
        return None
    if len(body.targets) != 1 or not isinstance(body.targets[0], ast.Name):
        return None
    name, call = body.targets[0].id, body.value
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "expand"
            and _is_name(call.func.value, name) and call.args and not call.keywords):
        return None
    size, rest = call.args[0], call.args[1:]
    if not isinstance(size, ast.Name) or not all(_is_int(r, -1) for r in rest):  # a name: one value both times
        return None
    left, right = test.left, test.comparators[0]
    same = ast.dump(size)
    if ast.dump(left) == same and _first_size(right, name):
        return 1, len(call.args)
    if ast.dump(right) == same and _first_size(left, name):
        return 0, len(call.args)
    return None


__all__ = ["skipped_expand"]

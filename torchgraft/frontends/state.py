"""State a forward changes: put back after capture's own runs, and found where tracing would bake it.

Capture runs the user's model (to record what each module receives, for fallback traces,
for real typing replays). Those runs must leave the model as it was: buffers a train-mode
run or an in-place update changes (BatchNorm statistics, an EMA) and plain Python
attributes a forward increments (``self.n += 1``) are restored afterwards.

A forward that assigns a plain attribute of its module keeps state in Python, which no trace
can record (a trace would bake the value it saw): ``assigned_attributes`` finds those, and
capture copies such a forward's source instead, so the emitted model updates it the same way.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import textwrap
from collections.abc import Iterator

import torch
from torch import nn

_PLAIN = (bool, int, float, str, type(None), tuple)


@contextlib.contextmanager
def restore_state(model: nn.Module) -> Iterator[None]:
    """Put every buffer and plain attribute (numbers, strings, tuples) of every module back afterwards."""
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b.device.type != "meta"]
    attrs = [(m, {k: v for k, v in m.__dict__.items() if isinstance(v, _PLAIN) and k != "training"})
             for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in buffers:
                b.copy_(v)
        for m, saved in attrs:
            for k, value in saved.items():
                if m.__dict__.get(k, value) is not value:
                    m.__dict__[k] = value


def _forward_tree(mod: nn.Module) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(type(mod).forward)))
    except (OSError, TypeError, SyntaxError):
        return None


def _self_root(node: ast.expr) -> str | None:
    """``mean`` for ``self.mean``, ``self.mean.mul_(0.9)``, ``self.mean[0]``: the attribute of self at the root."""
    while True:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            return None


def updated_buffers(mod: nn.Module) -> list[str]:
    """Buffers ``mod.forward`` changes in place (``self.mean.mul_(0.9)``, ``self.count += 1``,
    ``self.buf[0] = x``): fx would run those on the real tensors and leave them out of its graph."""
    tree = _forward_tree(mod)
    if tree is None:
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.endswith("_") \
                and not node.func.attr.startswith("_"):
            found.append(_self_root(node.func.value) or "")
        elif isinstance(node, ast.AugAssign):
            found.append(_self_root(node.target) or "")
        elif isinstance(node, ast.Assign):
            found += [_self_root(t.value) or "" for t in node.targets if isinstance(t, ast.Subscript)]
    return [n for n in dict.fromkeys(found) if n in mod._buffers or n in mod._parameters]


def assigned_attributes(mod: nn.Module) -> list[str]:
    """Plain attributes (not children, parameters or buffers) that ``mod.forward`` assigns
    (``self.n += 1``, ``self.cache = x``); [] when there are none or the source is not available."""
    tree = _forward_tree(mod)
    if tree is None:
        return []
    targets: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets += node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets.append(node.target)
    names = [t.attr for t in targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
             and t.value.id == "self"]
    own = set(mod._modules) | set(mod._parameters) | set(mod._buffers)
    return [n for n in dict.fromkeys(names) if n not in own]


__all__ = ["assigned_attributes", "restore_state", "updated_buffers"]

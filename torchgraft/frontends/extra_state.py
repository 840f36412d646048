"""Capture the extra state a module saves through ``get_extra_state``/``set_extra_state``.

The emitted class keeps both methods: they are copied from the original class (``ir.extra_state``),
the plain attributes they read becoming constructor-time constants, so
``emitted.load_state_dict(original.state_dict(), strict=True)`` works and the emitted model saves
what the original saves. The value itself goes with the weights: a tensor into
``weights.safetensors`` like any buffer; a JSON value (``None``, bool, int, float, str, lists and
str-keyed dicts of them, which JSON gives back exactly) into that file's metadata, under
``"extra_state"``, which the emitted ``load()`` reads. Anything else, or methods whose source cannot
stand alone, is refused with a ``CaptureError`` that says what to return instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.source_copy import copy_methods
from torchgraft.ir.extra_state import EXTRA_STATE_KEY, StateMethods
from torchgraft.ir.model import Helper
from torchgraft.ir.nodes import Block, Node, Opaque
from torchgraft.ir.traverse import join, map_tree

FIX = ("make get_extra_state return a tensor, or a JSON value (None, bool, int, float, str, lists and "
       "str-keyed dicts of them), or capture the module without its extra state")
"""What a refusal tells the user to do."""

_METHODS = ("get_extra_state", "set_extra_state")


def own_methods(mod: nn.Module) -> tuple[str, ...]:
    """Which of ``get_extra_state``/``set_extra_state`` ``mod``'s class overrides (empty for none)."""
    return tuple(n for n in _METHODS if getattr(type(mod), n) is not getattr(nn.Module, n))


def with_extra_state(root: Node, model: nn.Module, helpers: dict[str, Helper]) -> Node:
    """``root`` with the extra-state methods copied into every Block whose module defines them."""
    if not any(own_methods(m) for m in {type(m): m for m in model.modules()}.values()):  # the common case
        # (one module per class asked: the answer depends on the class alone): nothing to look up per node
        return root

    def attach(path: str, node: Node) -> Node:
        try:
            mod = model.get_submodule(path)
        except AttributeError:  # a node that stands for no module of its own
            return node
        methods = own_methods(mod)
        if not methods or isinstance(node, Opaque):  # an opaque module is its own class: it keeps them
            return node
        where = f"{path or '<root>'} ({type(mod).__name__})"
        if not isinstance(node, Block):
            raise CaptureError(f"{where} defines {', '.join(methods)}, but it is captured as a "
                               f"{type(node).__name__}, which cannot carry them; give it a forward of its own "
                               "(a Block), or capture it without extra state", path)
        try:
            source, attrs = copy_methods(mod, helpers, methods)
        except TraceError as e:
            raise CaptureError(f"{where}: its {' and '.join(methods)} cannot be copied into model.py ({e}). "
                               f"Write them as plain methods that read constants, or {FIX}.", path) from e
        clash = {n for n, _ in attrs} & ({n for n, _ in node.constants} | {s.name for s in node.state})
        if clash:
            raise CaptureError(f"{where}: its extra-state methods read self.{', self.'.join(sorted(clash))}, "
                               f"which its forward holds differently; {FIX}.", path)
        return replace(node, extra_state=StateMethods(source, attrs))

    return map_tree(root, attach)


def split_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, the other extra states) of a state_dict; CaptureError for a value JSON cannot keep."""
    tensors: dict[str, torch.Tensor] = {}
    others: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
            continue
        path = key.removesuffix("." + EXTRA_STATE_KEY) if key != EXTRA_STATE_KEY else ""
        if not _json_exact(value):
            raise CaptureError(f"{path or '<root>'}: get_extra_state returns a {type(value).__name__} "
                               f"({_short(value)}), which neither weights.safetensors nor its JSON metadata "
                               f"can hold exactly; {FIX}.", path)
        others[key] = value
    return tensors, others


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_exact(value: Any) -> bool:
    """Whether JSON gives ``value`` back with the same types and values."""
    try:
        back = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return False
    return _same(value, back)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def extra_key(path: str) -> str:
    """The state_dict key of the extra state of the module at ``path``."""
    return join(path, EXTRA_STATE_KEY)

"""``retype``'s replay over a module tree built from the IR (``retype_build``): the IR runs itself.

The modules ``build_from_ir`` makes for a Block, a Parallel or a SkipConnection are ``IRBlock`` holders
with no forward of their own, so the replay interprets every one of them: a Block's body (a Graph, or a
combinator body lowered to one) whatever its ``method`` (captured, hand-built, made by a pass), a
Parallel's branches and a SkipConnection's body on its children, joined by the ops
``ir.combine.combine_ops`` writes (the meaning emitted code has): ``ir.interpret.Interpreter.run`` and
``run_combinator`` do the work; this class only says when to step in. Leaf layers are called as
``MetaReplay`` calls them (shape rules, meta kernels). Every module it steps into records its output
type, so no forward hook is needed for them.

With ``memo=True`` (a tree built with ``build_from_ir(share=True)``, where equal nodes share one module
object) a block is replayed once per module object and input signature: the same holder called again
on inputs of the same shapes, strides and dtypes (and equal plain values) gets fresh meta tensors of the
first result's shapes and strides, and the types recorded below it, re-rooted at its own path. Only
results that are plain meta tensors owning their storage exactly (no offset view into a larger one), or
tuples/lists of them and plain values, made by the block (never one of its inputs) and from a run that
left its inputs' shapes as they were, are kept.

>>> IRReplay({}, {}, device="cpu").run_node(model.root, build_from_ir(model), "", (x,), {})   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

import torch
from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.frontends.meta_replay import MetaReplay
from torchgraft.ir.nodes import Block, Node, Parallel, SkipConnection
from torchgraft.ir.types import ValueType, type_of
from torchgraft.retype_build import IRBlock

_PLAIN = (bool, int, float, str, type(None))
_Rebuild = Callable[[], Any]


class _Record:
    """What one replay of a block made: a maker of its result, and the types recorded below it (relative paths)."""

    __slots__ = ("make", "modules", "ops")

    def __init__(self, make: _Rebuild, modules: list[tuple[str, ValueType]],
                 ops: list[tuple[str, dict[str, ValueType]]]) -> None:
        self.make, self.modules, self.ops = make, modules, ops


_NONE = object()


def _signature(value: Any) -> Any:
    """A hashable description of an input that fixes what a meta replay does with it; ``_NONE`` when there is none."""
    if type(value) is torch.Tensor and value.device.type == "meta":
        return ("t", tuple(value.shape), value.stride(), value.storage_offset(), value.untyped_storage().nbytes(),
                value.dtype)
    if type(value) in _PLAIN:
        return (type(value), value)
    return _NONE


def _maker(out: Any, inputs: list[Any]) -> _Rebuild | None:
    """A function making a value like ``out`` (fresh meta tensors), or None when ``out`` cannot be remade exactly."""
    if type(out) is torch.Tensor and out.device.type == "meta" and not any(out is i for i in inputs):
        shape, stride, dtype = tuple(out.shape), out.stride(), out.dtype
        again = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
        if out.storage_offset() or out.untyped_storage().nbytes() != again.untyped_storage().nbytes():
            return None  # a view into a larger storage: remade, it would be another tensor (as_strided, set_)
        return lambda: torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    if type(out) in _PLAIN:
        return lambda: out
    if type(out) in (tuple, list):
        parts = [_maker(o, inputs) for o in out]
        if any(p is None for p in parts):
            return None
        kind = type(out)
        return lambda: kind(p() for p in parts)  # type: ignore[misc]
    return None


class IRReplay(MetaReplay):
    """A ``MetaReplay`` that steps into every module built from the IR (an ``IRBlock``): see the module doc."""

    def __init__(self, helpers: dict[str, Callable[..., Any]], symbols: dict[int, str],
                 constants: dict[str, torch.Tensor] | None = None, device: str = "cpu", memo: bool = False) -> None:
        super().__init__(helpers, symbols, constants, device=device)
        self._memo: dict[tuple[Any, ...], _Record] | None = {} if memo else None

    def run_node(self, node: Node, mod: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Interpret ``node`` when ``mod`` is an ``IRBlock`` (it has no forward), else as ``MetaReplay`` does."""
        if not isinstance(mod, IRBlock):
            return super().run_node(node, mod, path, args, kwargs)
        key = self._key(mod, args, kwargs) if self._memo is not None and path else None
        if key is not None:
            rec = self._memo.get(key)  # type: ignore[union-attr]
            if rec is not None:
                return self._again(rec, path)
        fresh, n_mod, n_ops = path not in self.module_types, len(self.module_types), len(self.types)
        if isinstance(node, Block):
            out = self.run(node, mod, path, args, kwargs)
        elif isinstance(node, (Parallel, SkipConnection)):
            out = self.run_combinator(node, mod, path, args, kwargs)
        else:
            raise CaptureError(f"{path or '<root>'}: a {type(node).__name__} was built as a holder with no forward",
                               path)
        self.module_types.setdefault(path, type_of(out, self.symbols, self.meta_is))
        if key is not None and fresh and self._key(mod, args, kwargs) == key:  # its inputs left as they were
            self._keep(key, out, [*args, *kwargs.values()], path, n_mod, n_ops)
        return out

    @staticmethod
    def _key(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        if len(args) == 1 and not kwargs:  # the common call: one tensor
            one = _signature(args[0])
            return None if one is _NONE else (id(mod), mod.training, (), (one,))
        names = tuple(sorted(kwargs))
        sig = tuple(_signature(a) for a in (*args, *(kwargs[k] for k in names)))
        if any(s is _NONE for s in sig):
            return None
        return (id(mod), mod.training, names, sig)

    def _keep(self, key: tuple[Any, ...], out: Any, inputs: list[Any], path: str, n_mod: int, n_ops: int) -> None:
        """Record this replay of the block at ``path`` (types added since ``n_mod``/``n_ops``) under ``key``."""
        make = _maker(out, inputs)
        if make is None or self._memo is None:
            return
        mods = list(islice(reversed(self.module_types.items()), len(self.module_types) - n_mod))
        ops = list(islice(reversed(self.types.items()), len(self.types) - n_ops))
        if not all(p == path or p.startswith(path + ".") for p, _ in [*mods, *ops]):
            return
        cut = len(path)
        self._memo[key] = _Record(make, [(p[cut:], t) for p, t in reversed(mods)],
                                  [(p[cut:], dict(t)) for p, t in reversed(ops)])

    def _again(self, rec: _Record, path: str) -> Any:
        """The recorded replay at ``path``: its types under ``path``, and a fresh result."""
        for rel, t in rec.modules:
            self.module_types.setdefault(path + rel, t)
        for rel, seen in rec.ops:
            self.types.setdefault(path + rel, dict(seen))
        return rec.make()


__all__ = ["IRReplay"]

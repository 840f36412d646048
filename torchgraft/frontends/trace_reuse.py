"""One fx trace for the instances of a class that provably trace alike (capture speed).

Capture traces each module's own ``forward`` with torch.fx, children kept as calls. Sixteen
ResNet bottlenecks, twelve ViT encoder blocks: the same code run on different instances. A trace
is a deterministic function of the forward's code and of what it reads of its module; so an
instance may take a graph traced for another instance of its class when everything the forward
can read from ``self`` is the same, and never otherwise (``downsample`` None in one block and
not in the next: two keys, two traces).

What the forward reads is found in its source (``reads``), and refused (no reuse: the instance
is traced) wherever the source cannot say: ``self`` used other than as ``self.a.b`` (passed to a
function, ``getattr(self, ...)``, ``super()``), a property, a closure, a decorated forward, a
method of a child called, global state written (``global``, ``X.attr = ...``), or source that does
not compile to the running code (edited since import). The key (``reuse_key``) then holds, for
each ``self.a.b`` the forward or a method of its class it calls reads:

- a child called (``self.conv(x)``): its class, and that fx will name it ``conv`` (its first
  occurrence in the module's tree, as fx's own lookup by identity finds it);
- ``self.a is None``: whether it is;
- a parameter: that fx names it by this path (fx reads parameters as Proxies: no value is seen);
- a buffer (fx reads buffers as real tensors): its shape, strides, dtype and device, and its values
  compared with ``torch.equal`` (skipped on meta, where a trace cannot read values);
- a plain value (numbers, strings, None, dtypes, tuples/lists/dicts of those; functions and classes
  by identity): the value;
- anything else (a tensor in ``__dict__``, a module passed as a value, an object): no reuse.

``self.training`` is left out: traces replace it with a probe or a fixed mode. A traced graph is
kept for reuse only when it holds no tensor constant, no guard (their messages name the module's
path) and no child or attribute that the key does not cover (a module reached through a global).
The one assumption, as for any trace: a forward's trace depends on its module and arguments, not
on global state that traces change.

Two refinements (capture speed). A plain value the forward only passes on, as a direct argument,
to a ``torch.fx.wrap``-ed call (``StochasticDepth``'s ``p``) is keyed by kind, not value: an
instance with another value takes the earlier trace with its own value put in that argument,
where ``trace_template`` proved that is exactly its trace (``passed_key``). And where no module,
parameter or buffer sits at two places in the model (``unaliased``), the name fx gives each is the
path it was reached by, so that is not looked up.

>>> cache = TraceCache()
>>> cache.lookup(torch.nn.Identity(), (), ())[0] is None  # nothing stored yet
True
"""

from __future__ import annotations

import enum
import types
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from torchgraft.frontends.self_reads import reads
from torchgraft.frontends.trace_template import (
    Template,
    instantiate,
    passable,
    passed_attrs,
    template,
    unaliased,
    values_key,
)
from torchgraft.ir.graph import ChildCall, GetAttr, Graph, Guard

_PLAIN_TYPES = (type(None), bool, int, str, bytes, torch.dtype, torch.device, torch.layout, torch.memory_format)


class _NoReuse(Exception):
    """The instance must be traced: what its forward reads cannot be keyed."""


@dataclass(frozen=True, slots=True)
class _Ident:
    """An object compared and hashed by identity (a function, a class) inside a key."""

    obj: Any

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ident) and other.obj is self.obj


def _plain(value: Any, depth: int = 0) -> Hashable:
    """A hashable stand-in equal exactly when two values trace alike; ``_NoReuse`` for other objects."""
    if depth > 8:
        raise _NoReuse
    kind = type(value)  # exact types only: a subclass (a dict or float with its own attributes) may hold more
    if kind in _PLAIN_TYPES or isinstance(value, enum.Enum):
        return (kind, value)
    if kind is float:
        return (kind, value.hex())  # -0.0 and 0.0 print differently
    if kind is complex:
        return (kind, value.real.hex(), value.imag.hex())
    if kind in (tuple, list) and len(value) <= 1024:
        return (kind, tuple(_plain(v, depth + 1) for v in value))
    if kind is dict and len(value) <= 1024:
        return (kind, tuple((_plain(k, depth + 1), _plain(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return _Ident(value)
    raise _NoReuse


def _tensor(value: torch.Tensor, compare: list[torch.Tensor]) -> Hashable:
    if type(value) is not torch.Tensor or value.layout is not torch.strided:
        raise _NoReuse  # a subclass, a sparse or quantized tensor: more than shape, strides and values
    if value.device.type != "meta":  # a trace reads a buffer's values only where they exist
        compare.append(value)
    return ("buffer", tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad,
            type(value))


class _Names:
    """First names of modules, parameters and buffers in a module's tree: what fx names them by
    (its lookups by identity walk ``named_modules`` in order). The walk goes only as far as asked."""

    def __init__(self, mod: nn.Module, unique: bool = False) -> None:
        self.unique = unique  # no module, parameter or buffer sits at two places in the model: each has one name
        self._walk = mod.named_modules()
        self._maps: tuple[dict[int, str], dict[int, str], dict[int, str]] = ({}, {}, {})
        self._aliases: dict[int, int] = {}

    def alias(self, obj: Any) -> int:
        """The index of the first value read that is ``obj`` itself: two reads of one object (``self.dims is
        self.default``) key apart from two reads of equal objects."""
        return self._aliases.setdefault(id(obj), len(self._aliases))

    def named(self, kind: int, obj: Any, dotted: str) -> bool:
        """Whether fx names ``obj`` (reached through modules' own tables at ``dotted``) ``dotted``."""
        return self.unique or self.first(kind, obj) == dotted

    def first(self, kind: int, obj: Any) -> str | None:
        found = self._maps[kind].get(id(obj))
        while found is None:
            step = next(self._walk, None)
            if step is None:
                return None
            prefix, m = step
            mods, params, bufs = self._maps
            mods.setdefault(id(m), prefix)
            for n, p in m._parameters.items():
                if p is not None:
                    params.setdefault(id(p), f"{prefix}.{n}" if prefix else n)
            for n, b in m._buffers.items():
                if b is not None:
                    bufs.setdefault(id(b), f"{prefix}.{n}" if prefix else n)
            found = self._maps[kind].get(id(obj))
        return found


def _resolve(mod: nn.Module, chain: tuple[str, ...], use: str, names: _Names, compare: list[torch.Tensor],
             passed: dict[str, Any] | None = None) -> Hashable | types.FunctionType:
    """The key part for one read (a method of ``mod``'s class called: that function, analysed next).
    ``passed``: the forward's reads that are only passed on to a wrapped call (``trace_template``), and
    their values: keyed by kind alone, their values collected there."""
    if chain == ("training",):
        return None
    if passed is not None and len(chain) == 1 and chain[0] in passed and chain[0] in mod.__dict__ \
            and passable(mod.__dict__[chain[0]]) and _class_attr(type(mod), chain[0]) is _MISSING:
        passed[chain[0]] = mod.__dict__[chain[0]]
        return (chain[0], "passed")
    obj: Any = mod
    for i, name in enumerate(chain):
        last = i == len(chain) - 1
        static = _class_attr(type(obj), name)
        if static is not _MISSING and (hasattr(static, "__set__") or hasattr(static, "__delete__")):
            raise _NoReuse  # a property or other data descriptor: its code reads what the source does not show
        if name in obj.__dict__:
            value, where = obj.__dict__[name], "dict"
        elif static is not _MISSING:
            if hasattr(static, "__get__") and not isinstance(static, (types.FunctionType, staticmethod, classmethod)):
                raise _NoReuse  # cached_property & co.: computed from the instance
            if isinstance(static, types.FunctionType):
                if obj is mod and last and use == "call":
                    return static
                raise _NoReuse  # a bound method passed on, or a child's method (fx traces into it)
            return ("class", chain, _Ident(type(obj)))  # a class attribute: the same for its class
        elif name in obj._parameters:
            value, where = obj._parameters[name], "param"
        elif name in obj._buffers:
            value, where = obj._buffers[name], "buffer"
        elif name in obj._modules:
            value, where = obj._modules[name], "module"
        else:
            raise _NoReuse
        if not last and where == "module" and isinstance(value, nn.Module):
            obj = value
            continue
        if not last and where not in ("dict", "param"):
            raise _NoReuse  # a buffer's attributes (a real tensor's, the trace may read any of them)
        if not last:  # a plain value's method or attribute (``self.dims.index(d)``), a Proxy's (``self.weight.T``)
            return _terminal(value, where, ".".join(chain[: i + 1]), "value", names, compare)
        return _terminal(value, where, ".".join(chain), use, names, compare)
    raise _NoReuse


def _terminal(value: Any, where: str, dotted: str, use: str, names: _Names, compare: list[torch.Tensor]
              ) -> Hashable:
    return (*_terminal_value(value, where, dotted, use, names, compare), ("same as", names.alias(value)))


def _terminal_value(value: Any, where: str, dotted: str, use: str, names: _Names, compare: list[torch.Tensor]
                    ) -> tuple[Hashable, ...]:
    if use == "none":
        return (dotted, "none", value is None)
    if value is None:
        return (dotted, "is None", use)
    if where == "module":
        if use != "call" or not names.named(0, value, dotted):
            raise _NoReuse
        return (dotted, "module", _Ident(type(value)))
    if where == "param":
        if not names.named(1, value, dotted):
            raise _NoReuse
        return (dotted, "param", use)
    if where == "buffer":
        if not names.named(2, value, dotted):
            raise _NoReuse
        return (dotted, _tensor(value, compare), use)
    if isinstance(value, (torch.Tensor, nn.Module)):
        raise _NoReuse
    return (dotted, _plain(value), use)


_MISSING = object()


def _class_attr(cls: type, name: str) -> Any:
    """What ``name`` is on ``cls`` or a base (as Python's attribute lookup finds it there), else ``_MISSING``."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return _MISSING


def reuse_key(mod: nn.Module, nones: tuple[str, ...], given: tuple[str, ...]
              ) -> tuple[tuple[Hashable, ...], list[torch.Tensor]] | None:
    """(key, buffers to compare by value) under which ``mod``'s trace may be shared, or None."""
    found = _key(mod, nones, given, frozenset(), False)
    return None if found is None else found[:2]


def passed_key(mod: nn.Module, nones: tuple[str, ...], given: tuple[str, ...], unique: bool = False
               ) -> tuple[tuple[Hashable, ...], list[torch.Tensor], dict[str, Any]] | None:
    """``reuse_key``, except that the values the forward only passes on to a wrapped call
    (``trace_template.passed_attrs``) are keyed by kind and returned apart: attribute -> value.
    ``unique``: no module, parameter or buffer of the model sits at two places (``unaliased``)."""
    loose = frozenset(a for a, _ in passed_attrs(type(mod).forward))
    while True:
        found = _key(mod, nones, given, loose, unique)
        if found is None or isinstance(found[2], dict):
            return found  # type: ignore[return-value]
        loose -= found[2]  # read by a method of the forward too: keyed by value


def _key(mod: nn.Module, nones: tuple[str, ...], given: tuple[str, ...], loose: frozenset[str], unique: bool
         ) -> tuple[tuple[Hashable, ...], list[torch.Tensor], dict[str, Any] | frozenset[str]] | None:
    """(key, buffers, passed values); the passed values are the attributes of ``loose`` that a method
    the forward calls reads too, when there are any (the caller keys them by value then)."""
    if nones or given:  # guards: their messages name the module's path
        return None
    names = _Names(mod, unique)
    compare: list[torch.Tensor] = []
    parts: list[Hashable] = [_Ident(type(mod))]
    passed: dict[str, Any] = dict.fromkeys(loose)
    todo, seen = [type(mod).forward], set()
    try:
        while todo:
            fn = todo.pop()
            if fn in seen:
                continue
            seen.add(fn)
            found = reads(fn)
            if found is None:
                return None
            if fn is not type(mod).forward and loose & {chain[0] for chain, _ in found}:
                return tuple(parts), compare, loose & {chain[0] for chain, _ in found}
            for chain, use in found:
                part = _resolve(mod, chain, use, names, compare, passed if fn is type(mod).forward else None)
                if isinstance(part, types.FunctionType):
                    todo.append(part)
                parts.append(_Ident(part) if isinstance(part, types.FunctionType) else part)
    except _NoReuse:
        return None
    except Exception:  # noqa: BLE001 - anything unforeseen: trace it, as without reuse
        return None
    return tuple(parts), compare, {k: v for k, v in passed.items() if k in loose and (k, "passed") in parts}


def covered(key: tuple[Hashable, ...], children: list[str], attrs: list[str]) -> bool:
    """Whether every child a graph calls is one the key names as called (``self.conv(x)``), and every
    attribute it reads a parameter or buffer the key names (a module reached another way: no reuse)."""
    parts = [p for p in key if isinstance(p, tuple) and len(p) > 1 and isinstance(p[0], str)]
    called = {p[0] for p in parts if p[1] == "module"}
    tensors = {p[0] for p in parts if p[1] == "param" or (isinstance(p[1], tuple) and p[1][:1] == ("buffer",))}
    return set(children) <= called and set(attrs) <= tensors


@dataclass
class TraceCache:
    """Traces kept for reuse within one capture: key -> [(buffers compared by value, passed values, result,
    template)]. Instances whose forwards only pass some values on to a wrapped call (``trace_template``)
    share a key; an entry serves one whose passed values are equal, or any through its template."""

    entries: dict[tuple[Hashable, ...], list[tuple[list[torch.Tensor], Hashable, Any, Template | None]]] = field(
        default_factory=dict)
    unique: bool = False  # the model holds each module, parameter and buffer once (``unaliased``)

    def lookup(self, mod: nn.Module, nones: tuple[str, ...], given: tuple[str, ...]) -> tuple[Any, Any]:
        """(stored result or None, token to ``store`` a new result under; None: do not store)."""
        found = passed_key(mod, nones, given, self.unique)
        if found is None:
            return None, None
        key, compare, passed = found
        mine = values_key(passed)
        for tensors, values, result, tpl in self.entries.get(key, []):
            if not all(torch.equal(a, b) for a, b in zip(tensors, compare)):
                continue
            if values == mine:
                return result, None
            if tpl is not None:
                return (instantiate(tpl, passed), None, {}), None
        return None, found

    def store(self, token: Any, result: tuple[Any, Any, dict[str, torch.Tensor]],
              traced: fx.Graph | None = None) -> None:
        """Keep a trace ``(body, train_body, constants)`` for the instances that share ``token``: only
        one without tensor constants or guards, whose children and attributes the key all names.
        ``traced``: its fx graph, when one trace serves both modes (a template of it is kept for instances
        with other passed values)."""
        if token is None or result[2]:
            return
        graphs = [g for g in result[:2] if g is not None]
        if not all(isinstance(g, Graph) for g in graphs):
            return
        ops = [op for g in graphs for op in g.ops]
        if any(isinstance(op.target, Guard) for op in ops):
            return
        key, compare, passed = token
        if covered(key, [op.target.path for op in ops if isinstance(op.target, ChildCall)],
                   [op.target.path for op in ops if isinstance(op.target, GetAttr)]):
            tpl = None
            if passed and traced is not None and result[1] is None:
                tpl = template(traced, result[0], key[0].obj.forward, passed)  # key[0]: the module's class
            # the buffers' values as they were traced, whatever changes them later
            self.entries.setdefault(key, []).append(([t.detach().clone() for t in compare], values_key(passed),
                                                     result, tpl))


__all__ = ["TraceCache", "passed_key", "reuse_key", "unaliased"]

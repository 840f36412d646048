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
import copy
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

_PLAIN = (bool, int, float, str, type(None), tuple)
_CONTAINERS = (list, dict, set)


_Analysis = Callable[[nn.Module], list[str]]
_CACHE: dict[tuple[Any, ...], list[str]] = {}


def _per_layout(fn: _Analysis) -> _Analysis:
    """Cache a source analysis per class and per what it looks at on the instance (the names of its
    children, parameters, buffers and container attributes): the sixteen blocks of a ResNet share one."""
    @functools.wraps(fn)
    def cached(mod: nn.Module) -> list[str]:
        plain = frozenset(k for k, v in mod.__dict__.items() if isinstance(v, _CONTAINERS) and not k.startswith("_"))
        key = (fn.__name__, type(mod), tuple(mod._modules), tuple(mod._parameters), tuple(mod._buffers), plain)
        if key not in _CACHE:
            _CACHE[key] = fn(mod)
        return list(_CACHE[key])
    return cached


class _Saved:
    """One module's state as it was: buffer and parameter slots, tensor values, plain attributes
    (numbers, strings, tuples, and lists/dicts/sets of them, copied)."""

    def __init__(self, mod: nn.Module) -> None:
        self.mod = mod
        self.slots: tuple[dict[str, Any], dict[str, Any]] = dict(mod._buffers), dict(mod._parameters)
        tensors = [t for t in (*mod._buffers.values(), *mod.__dict__.values()) if isinstance(t, torch.Tensor)]
        self.values = [(t, t.detach().clone()) for t in tensors if t.device.type != "meta"]
        self.attrs = {k: v for k, v in mod.__dict__.items() if not k.startswith("_") and k != "training"}
        self.copies = {k: copy.deepcopy(v) for k, v in self.attrs.items()
                       if isinstance(v, _CONTAINERS) and _plain_container(v)}
        self.size = len(mod.__dict__)

    def restore(self) -> None:
        mod = self.mod
        slots: tuple[dict[str, Any], dict[str, Any]] = (mod._buffers, mod._parameters)
        for slot, saved in zip(slots, self.slots):
            if len(slot) != len(saved) or any(slot.get(k) is not v for k, v in saved.items()):
                _refill(slot, saved)
        with torch.no_grad():
            for t, value in self.values:
                t.copy_(value)
        if len(mod.__dict__) != self.size:  # attributes a run added
            for k in [k for k in mod.__dict__ if not k.startswith("_") and k != "training" and k not in self.attrs]:
                del mod.__dict__[k]
        for k, v in self.attrs.items():
            if mod.__dict__.get(k) is not v:
                mod.__dict__[k] = v
        for k, contents in self.copies.items():  # the same object, its contents as they were
            _refill(self.attrs[k], contents)


def _plain_container(v: object) -> bool:
    items = list(v.items()) if isinstance(v, dict) else [(x, x) for x in v]  # type: ignore[attr-defined]
    return all(isinstance(a, _PLAIN) and (isinstance(b, _PLAIN) or (isinstance(b, _CONTAINERS)
                                                                   and _plain_container(b))) for a, b in items)


def _refill(obj: Any, saved: Any) -> None:
    if isinstance(obj, list):
        obj[:] = saved
    else:
        obj.clear()
        obj.update(saved)


@contextlib.contextmanager
def restore_state(model: nn.Module, only: list[nn.Module] | None = None) -> Iterator[None]:
    """Put every module's buffers, parameters, tensor attributes and plain attributes back afterwards:
    values, and which tensor each name holds (a forward may assign ``self.running = ...``). ``only``
    limits it to those modules and what they hold."""
    saved = [_Saved(m) for m in (model.modules() if only is None else (s for o in only for s in o.modules()))]
    try:
        yield
    finally:
        for s in saved:
            s.restore()


def own_view(mod: nn.Module) -> nn.Module:
    """A shallow copy of ``mod`` to trace with: its own ``__dict__`` and buffer/parameter slots, so
    what the forward assigns (``self.running = ...``, a Proxy in an fx trace) stays on the copy."""
    view = copy.copy(mod)
    object.__setattr__(view, "_buffers", dict(mod._buffers))
    object.__setattr__(view, "_parameters", dict(mod._parameters))
    return view


def as_self(tree: ast.AST) -> ast.AST:
    """``tree`` (a parsed method) with its first parameter called ``self``, whatever the author named it."""
    fdef = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if fdef is None or not fdef.args.args or fdef.args.args[0].arg == "self":
        return tree
    old = fdef.args.args[0].arg
    fdef.args.args[0].arg = "self"
    for node in ast.walk(fdef):
        if isinstance(node, ast.Name) and node.id == old:
            node.id = "self"
    return tree


def _forward_tree(mod: nn.Module) -> ast.AST | None:
    return method_tree(type(mod).forward)


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


@_per_layout
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


_MUTATORS = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault", "add",
                       "discard", "popitem", "sort", "reverse"})


@functools.lru_cache(maxsize=4096)
def method_tree(fn: object) -> ast.AST | None:
    """The parsed source of a method, its first parameter called ``self`` (cached: do not change it)."""
    try:
        return as_self(ast.parse(textwrap.dedent(inspect.getsource(fn))))  # type: ignore[arg-type]
    except (OSError, TypeError, SyntaxError):
        return None


def _writes(tree: ast.AST, mod: nn.Module) -> tuple[list[str], list[str]]:
    """(attributes of self written in this code, methods of self it calls)."""
    written: list[str] = []
    called: list[str] = []
    plain = {k for k, v in mod.__dict__.items() if isinstance(v, _CONTAINERS) and not k.startswith("_")}
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                written.append(t.attr)  # self.n = ..., self.running = ...
            elif isinstance(t, ast.Subscript) and _self_root(t) in plain:
                written.append(_self_root(t) or "")  # self.stats["n"] += 1
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "self":
                called.append(node.func.attr)
            elif node.func.attr in _MUTATORS and _self_root(owner) in plain:
                written.append(_self_root(owner) or "")  # self.hist.append(1)
        if isinstance(node, ast.Call) and _is_setattr(node):
            written.append("<setattr>")
    return written, called


def _is_setattr(call: ast.Call) -> bool:
    f = call.func
    named = (isinstance(f, ast.Name) and f.id == "setattr") or (
        isinstance(f, ast.Attribute) and f.attr == "__setattr__")
    first = call.args[0] if call.args else None
    return named and isinstance(first, ast.Name) and first.id == "self"


@_per_layout
def assigned_attributes(mod: nn.Module) -> list[str]:
    """State of ``mod`` that its forward (or a method of its class it calls) writes in Python: attributes
    assigned (``self.n += 1``, ``self.running = ...`` on a buffer, ``setattr(self, ...)``) and plain
    containers changed (``self.stats["n"] += 1``, ``self.hist.append(x)``). Children and parameters
    assigned are not counted. [] when there are none or the source is not available."""
    written: list[str] = []
    seen: set[str] = set()
    todo = ["forward"]
    while todo:
        name = todo.pop()
        seen.add(name)
        fn = getattr(type(mod), name, None)
        library = (getattr(fn, "__module__", None) or "").split(".")[0] == "torch"
        tree = method_tree(fn) if fn is not None and not library else None
        if tree is None:
            continue
        w, called = _writes(tree, mod)
        written += w
        todo += [c for c in called if c not in seen and c not in mod._modules]
    own = set(mod._modules) | set(mod._parameters)
    return [n for n in dict.fromkeys(written) if n not in own]


_SIZE_CALLS = frozenset({"size", "numel", "dim", "nelement", "ndimension"})
_SIZE_ATTRS = frozenset({"shape", "ndim"})


def _reads_size(node: ast.AST, sized: set[str]) -> bool:
    """True when the expression reads a tensor's size (``x.size(1)``, ``x.shape[0]``, ``len(x)``) or a
    local variable that holds one."""
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr in _SIZE_ATTRS:
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _SIZE_CALLS:
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "len":
            return True
        if isinstance(n, ast.Name) and n.id in sized:
            return True
    return False


@_per_layout
def size_driven_python(mod: nn.Module) -> list[str]:
    """Places where ``mod.forward`` lets a size drive Python itself: ``for i in range(x.size(1))``,
    ``self.layers[: x.size(0)]``. A trace would unroll or slice for the example's size (Python reads
    a size's value directly there, so no guard can see it); capture copies such a forward's source."""
    tree = _forward_tree(mod)
    if tree is None:
        return []
    sized: set[str] = set()
    for node in ast.walk(tree):  # n = x.size(1); h, w = x.shape[-2:]
        if isinstance(node, ast.Assign) and _reads_size(node.value, sized):
            for t in node.targets:
                sized |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                and any(_reads_size(a, sized) for a in node.args):
            found.append(f"range(...) at line {node.lineno}")
        elif isinstance(node, ast.Subscript) and _self_root(node.value) in mod._modules \
                and isinstance(node.slice, ast.Slice) and _reads_size(node.slice, sized):
            found.append(f"self.{_self_root(node.value)}[...] at line {node.lineno}")
    return found


@_per_layout
def _list_methods_on_arguments(mod: nn.Module) -> list[str]:
    tree = _forward_tree(mod)
    fdef = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)), None) if tree is not None else None
    if fdef is None:
        return []
    params = {a.arg for a in (*fdef.args.args[1:], *fdef.args.kwonlyargs)}
    found = [node.func.value.id for node in ast.walk(fdef)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS
             and isinstance(node.func.value, ast.Name) and node.func.value.id in params]
    return list(dict.fromkeys(found))


def mutated_arguments(mod: nn.Module, seen: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[str]:
    """Arguments ``mod.forward`` changes in place as Python containers (``names.append("pool")``,
    ``xs.extend(...)``): a trace sees only what the forward returns, so the caller's list would not change.
    ``seen`` are recorded calls: an argument that was never a list/dict/set there (a cache left None) is
    not counted; with no recorded call every such argument is."""
    found = _list_methods_on_arguments(mod)
    if not seen:
        return found
    sig = inspect.signature(type(mod).forward)
    values: list[dict[str, Any]] = []
    for args, kwargs in seen:
        try:
            values.append(sig.bind(mod, *args, **kwargs).arguments)
        except TypeError:
            return found
    return [n for n in found if any(isinstance(v.get(n), _CONTAINERS) for v in values)]


_UNGUARDED = frozenset({"is_grad_enabled", "requires_grad", "is_contiguous", "is_inference_mode_enabled"})


@_per_layout
def value_driven_python(mod: nn.Module) -> list[str]:
    """What ``mod.forward`` reads that a trace would fix without a guard: grad mode, ``requires_grad``,
    contiguity (``if torch.is_grad_enabled():``)."""
    tree = _forward_tree(mod)
    if tree is None:
        return []
    return list(dict.fromkeys(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in _UNGUARDED))


__all__ = ["as_self", "assigned_attributes", "method_tree", "mutated_arguments", "own_view", "restore_state",
           "size_driven_python", "updated_buffers", "value_driven_python"]

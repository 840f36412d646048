"""Copy plain Python helper functions a forward calls into the IR (``Helper``).

fx keeps functions marked with ``torch.fx.wrap`` (torchvision's
``stochastic_depth``, swin's ``shifted_window_attention``) as opaque calls. The
emitted ``model.py`` must not import the model's package, so the function's source is
copied: its decorators dropped, the globals it reads resolved to torch imports,
constants, or further helpers copied the same way. Anything else is refused with a
reason, and the calling block stays opaque.

What a helper reads is copied with it, transitively, and all or nothing: a helper whose
closure cannot be copied adds nothing to the table (a half-copied helper would emit a
``model.py`` that fails with NameError at its first forward). Inside a capture fx has
replaced every ``torch.fx.wrap``-ed global with a wrapper; the original function is
copied, not the wrapper. Constant globals are written as literals that parse on their
own: ``math.inf``/``math.nan`` (with ``import math``), numpy scalars and int/str Enum
members as the plain number or string they equal.

Plain classes are copied the same way (``helper_classes``). A module model.py may not import,
read only as ``module.f`` (torchvision's ``box_ops.batched_nms``), has those reads rewritten to
the copied ``f``. Two different helpers of one name are emitted as ``f``, ``f_2``, ... with
the reading code renamed to match. Functions with a plain-torch stand-in (``substitutes``:
torchvision's ``nms``, ``roi_align``) are copied as the stand-in.
"""

from __future__ import annotations

import ast
import builtins
import collections
import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import _symbolic_trace as fx_trace

from torchgraft.frontends import source_cache
from torchgraft.frontends.substitutes import substitute_for
from torchgraft.ir.model import Helper, HelperKind, helper_key
from torchgraft.ir.values import plain_constant

_IMPORTABLE = {"torch", "torch.nn", "torch.nn.functional", "math", "typing", "collections",
               "itertools", "functools", "operator", "warnings", "numbers"}
_STDLIB = {"types", "typing", "collections", "math", "functools", "itertools", "operator", "numbers",
           "enum", "dataclasses", "warnings"}
_PREAMBLE_NAMES = {"torch", "nn", "F", "Tensor"}


class HelperError(Exception):
    """A function could not be copied; the message says why."""


_DROPPED_CALLS = frozenset({"_log_api_usage_once"})
"""Calls that only log usage; they are left out of copied helpers."""


class _StripLogging(ast.NodeTransformer):
    """Remove ``_log_api_usage_once(...)`` statements (and ifs left empty by that)."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in _DROPPED_CALLS:
            return None
        return node

    def visit_If(self, node: ast.If) -> ast.AST | None:
        self.generic_visit(node)
        if not node.body and not node.orelse:
            return None
        if not node.body:
            node.body = [ast.Pass()]
        return node


def _namedtuple_source(cls: type) -> str:
    fields = ", ".join(repr(f) for f in cls._fields)  # type: ignore[attr-defined]
    return f"{cls.__name__} = collections.namedtuple({cls.__name__!r}, [{fields}])\n"


def _float_source(v: float) -> str:
    if math.isnan(v):
        return "math.nan"
    if math.isinf(v):
        return "math.inf" if v > 0 else "-math.inf"
    return repr(v)


def _constant_source(name: str, value: Any) -> str | None:
    """``NAME = literal`` for a constant global, or None when ``value`` is no plain constant."""
    value = plain_constant(value)
    if isinstance(value, float):
        return f"{name} = {_float_source(value)}\n"
    if isinstance(value, complex) and not (math.isfinite(value.real) and math.isfinite(value.imag)):
        return f"{name} = complex({_float_source(value.real)}, {_float_source(value.imag)})\n"
    if isinstance(value, (int, str, bool, complex, type(None))):
        return f"{name} = {value!r}\n"
    return None


def _fx_wrapper_code() -> Any:
    create = getattr(fx_trace, "_create_wrapped_func", None)
    return create(len).__code__ if create is not None else None


_FX_WRAPPER_CODE = _fx_wrapper_code()


def is_fx_wrapper(code: Any) -> bool:
    """Whether ``code`` is that of the wrapper fx puts in place of a ``torch.fx.wrap``-ed function."""
    return code is not None and code is _FX_WRAPPER_CODE


def _script_if_tracing_code() -> Any:
    return torch.jit._script_if_tracing(_fx_wrapper_code).__code__


_SCRIPT_IF_TRACING_CODE = _script_if_tracing_code()


def unpatched(value: Any) -> Any:
    """The original of a ``torch.fx.wrap``-ed function while fx has it patched, or of a
    ``torch.jit._script_if_tracing`` function (which calls it as is outside a TorchScript trace);
    else ``value``."""
    while getattr(value, "__code__", None) in (_FX_WRAPPER_CODE, _SCRIPT_IF_TRACING_CODE) \
            and hasattr(value, "__wrapped__"):
        value = value.__wrapped__
    return value


def collect(fn: Callable[..., Any], out: dict[str, Helper]) -> str:
    """Add ``fn`` and, transitively, what it needs to ``out``; return the name it is emitted under.

    All or nothing: on HelperError ``out`` is left as it was.
    """
    staged = dict(out)
    name = _collect(fn, staged)
    out.update(staged)
    return name


def _collect(fn: Callable[..., Any], out: dict[str, Helper], reader: tuple[str, str] | None = None) -> str:
    if isinstance(fn, type) and issubclass(fn, tuple) and hasattr(fn, "_fields"):
        _add(out, Helper("collections", "import collections\n", "", HelperKind.IMPORT))
        out.setdefault(fn.__name__, Helper(fn.__name__, _namedtuple_source(fn), fn.__module__))
        return fn.__name__
    if isinstance(fn, type):
        from torchgraft.frontends.helper_classes import collect_class

        return collect_class(fn, out)
    sub = substitute_for(fn, reader)
    if sub is not None:
        return _collect_function(*sub[:2], out=out, origin=sub[2])
    if not isinstance(fn, types.FunctionType):
        raise HelperError(f"{fn!r} is not a plain Python function")
    return _collect_function(fn, fn.__globals__, out, f"{fn.__module__}.{fn.__qualname__}")


def free_name(name: str, origin: str, out: dict[str, Helper]) -> tuple[str, bool]:
    """(the name to emit a helper of ``origin`` under, whether it is already in ``out``).

    Two different helpers both called ``f`` (torchvision has two ``_fake_cast_onnx``) get
    ``f``, ``f_2``, ...; the code reading the second is rewritten to call ``f_2``.
    """
    candidate, k = name, 1
    while candidate in out or helper_key(HelperKind.CONSTANT, candidate) in out:
        if candidate in out and out[candidate].origin == origin:
            return candidate, True
        k += 1
        candidate = f"{name}_{k}"
    return candidate, False


def _collect_function(fn: types.FunctionType, namespace: dict[str, Any], out: dict[str, Helper],
                      origin: str) -> str:
    name, done = free_name(fn.__name__, origin, out)
    if done:
        return name
    if fn.__closure__:
        raise HelperError(f"{fn.__qualname__} is a closure")
    try:  # from the code object: a library may have wrapped the function in itself (a skipped compile)
        src = source_cache.function_source(fn.__code__)
    except (OSError, TypeError) as e:
        raise HelperError(f"source of {fn.__qualname__} is not available: {e}") from None
    tree = ast.parse(src)
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef):
        raise HelperError(f"{fn.__qualname__} is not a def")
    fdef.decorator_list = []
    fdef.name = name
    if any(call in src for call in _DROPPED_CALLS):
        _StripLogging().visit(fdef)
    out[name] = Helper(name, "", origin)  # placeholder while its globals are resolved (recursion)
    edits = source_cache.edits()
    resolve_globals(fdef, fn, namespace, out, used=source_cache.names(src, fdef))
    del out[name]  # re-added after what it needs
    text = source_cache.unparsed(src, name, fdef) if source_cache.edits() == edits else ast.unparse(fdef)
    out[name] = Helper(name, text + "\n", origin)
    return name


def resolve_globals(tree: ast.AST, fn: Callable[..., Any], namespace: dict[str, Any], out: dict[str, Helper],
                    local: set[str] | None = None, used: tuple[str, ...] | None = None) -> None:
    """Resolve every global ``tree`` (the source of ``fn``) reads from ``namespace`` into ``out``.

    ``local`` names shadow globals (default: ``fn``'s arguments and locals). A module that
    model.py may not import, read only as ``module.attr`` (``box_ops.batched_nms``), has those
    reads rewritten in ``tree`` to the copied ``attr`` helper. ``used``: the names ``tree`` holds, when known.
    """
    if local is None:
        code = fn.__code__  # type: ignore[attr-defined]
        local = set(code.co_varnames) | set(code.co_cellvars)
    if used is None:
        used = tuple(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)))  # code and annotations
    for g in used:
        if g in namespace and g not in local:
            value = unpatched(namespace[g])
            if isinstance(value, types.ModuleType) and value.__name__ not in _IMPORTABLE:
                _inline_module(tree, g, value, fn, namespace, out, local)
                continue
            _resolve_global(g, value, fn, out, tree, (str(namespace.get("__name__", "")), g))


def _inline_module(tree: ast.AST, name: str, module: types.ModuleType, fn: Callable[..., Any],
                   namespace: dict[str, Any], out: dict[str, Helper], local: set[str]) -> None:
    """Rewrite ``name.attr`` reads of a non-importable module to ``attr`` and copy each ``attr``."""
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
    attrs = {id(n.value): n for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id == name and isinstance(n.ctx, ast.Load)}
    if len(attrs) != len(uses):
        raise HelperError(f"{fn.__qualname__} uses module {module.__name__!r}, which model.py may not import")
    names = list(dict.fromkeys(node.attr for node in attrs.values()))
    for attr in names:
        value = getattr(module, attr, None)
        if value is None or attr in local or (attr in namespace and unpatched(namespace[attr]) is not value):
            raise HelperError(f"{fn.__qualname__} reads {name}.{attr}, which cannot be copied under the name {attr!r}")
    _Rename(name).visit(tree)
    for attr in names:
        _resolve_global(attr, getattr(module, attr), fn, out, tree, (module.__name__, attr))


class _RenameName(ast.NodeTransformer):
    """Every ``Name`` ``old`` → ``new``."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.old:
            node.id = self.new
            source_cache.edited()
        return node


class _Rename(ast.NodeTransformer):
    """``module.attr`` → ``attr`` for one module name."""

    def __init__(self, module: str) -> None:
        self.module = module

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id == self.module:
            source_cache.edited()
            return ast.copy_location(ast.Name(node.attr, ast.Load()), node)
        return self.generic_visit(node)


def enum_api_use(tree: ast.AST, is_use: Callable[[ast.expr], bool], value: Any) -> str | None:
    """The attribute a use of an Enum constant reads that its plain value lacks (``.value``), if any.

    Constants are copied as their plain value; code that reads ``MODE.value`` or
    ``self.mode.name`` would then fail, so such reads make the copy refuse.
    """
    if not isinstance(value, enum.Enum):
        return None
    plain = plain_constant(value)
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and is_use(n.value) and not hasattr(plain, n.attr):
            return n.attr
    return None


def _resolve_global(name: str, value: Any, fn: Callable[..., Any], out: dict[str, Helper],
                    tree: ast.AST | None = None, reader: tuple[str, str] | None = None) -> None:
    """Make global ``name`` of ``fn`` available to its copy: an import, a constant or a copied helper.

    ``tree`` is the copied code that reads it (checked for Enum-only attribute reads).
    Raises HelperError when the global cannot be provided.
    """
    value = unpatched(value)
    if name in _PREAMBLE_NAMES:
        expected = {"torch": torch, "F": torch.nn.functional, "nn": torch.nn, "Tensor": torch.Tensor}
        if name in expected and value is not expected[name]:
            raise HelperError(f"{fn.__qualname__} uses a global {name!r} that is not {expected[name]!r}")
        return
    if isinstance(value, types.ModuleType):
        if value.__name__ in _IMPORTABLE:
            alias = "" if value.__name__ == name else f" as {name}"
            _add(out, Helper(name, f"import {value.__name__}{alias}\n", "", HelperKind.IMPORT))
            return
        raise HelperError(f"{fn.__qualname__} uses module {value.__name__!r}, which model.py may not import")
    if getattr(builtins, name, None) is value:
        return
    if value is typing.Optional or getattr(typing, name, None) is value:
        _add(out, Helper(name, f"from typing import {name}\n", "", HelperKind.IMPORT))
        return
    mod = getattr(value, "__module__", "") or ""
    vname = str(getattr(value, "__name__", ""))
    if mod in _STDLIB and vname and getattr(__import__(mod), vname, None) is value:
        alias = "" if vname == name else f" as {name}"
        _add(out, Helper(name, f"from {mod} import {vname}{alias}\n", "", HelperKind.IMPORT))
        return
    if mod == "torch.nn.modules.utils" and vname and getattr(torch.nn.modules.utils, vname, None) is value:
        _add(out, Helper(name, f"from {mod} import {vname}" + ("" if vname == name else f" as {name}") + "\n",
                         "", HelperKind.IMPORT))
        return
    if callable(value) and (mod == "torch" or mod.startswith("torch.")):
        raise HelperError(f"{fn.__qualname__} uses {name} from {value.__module__}; only torch, F and nn are "
                          "available in model.py")
    if isinstance(value, (types.FunctionType, type)):
        emitted = _collect(value, out, reader)
        if emitted != name:  # emitted under another name (a clash, an alias): the reading code follows
            if tree is None:
                raise HelperError(f"{fn.__qualname__} reads {name!r}, which is copied as {emitted!r}")
            _RenameName(name, emitted).visit(tree)
        return
    _add_constant(name, value, fn, out, tree)


def _add_constant(name: str, value: Any, fn: Callable[..., Any], out: dict[str, Helper],
                  tree: ast.AST | None) -> None:
    const = _constant_source(name, value)
    if const is None:
        raise HelperError(f"{fn.__qualname__} reads global {name!r} of type {type(value).__name__}")
    attr = None if tree is None else enum_api_use(tree, lambda e: isinstance(e, ast.Name) and e.id == name, value)
    if attr is not None:
        raise HelperError(f"{fn.__qualname__} reads {name}.{attr} of an Enum global, which is copied as its value")
    if isinstance(plain_constant(value), (float, complex)) and "math." in const:
        _add(out, Helper("math", "import math\n", "", HelperKind.IMPORT))
    _add(out, Helper(name, const, fn.__module__, HelperKind.CONSTANT))


def _add(out: dict[str, Helper], helper: Helper) -> None:
    """``helper`` under its key (``import:math``), unless one is there already (the first is kept)."""
    out.setdefault(helper.key, helper)


__all__ = ["HelperError", "collect", "collections", "enum_api_use", "is_fx_wrapper", "resolve_globals", "unpatched"]

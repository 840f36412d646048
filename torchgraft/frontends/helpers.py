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
"""

from __future__ import annotations

import ast
import builtins
import collections
import enum
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import _symbolic_trace as fx_trace

from torchgraft.ir.model import Helper
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


def unpatched(value: Any) -> Any:
    """The original of a ``torch.fx.wrap``-ed function while fx has it patched; else ``value``."""
    while getattr(value, "__code__", None) is _FX_WRAPPER_CODE and hasattr(value, "__wrapped__"):
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


def _collect(fn: Callable[..., Any], out: dict[str, Helper]) -> str:
    if isinstance(fn, type) and issubclass(fn, tuple) and hasattr(fn, "_fields"):
        out.setdefault("import:collections", Helper("import:collections", "import collections\n", ""))
        out.setdefault(fn.__name__, Helper(fn.__name__, _namedtuple_source(fn), fn.__module__))
        return fn.__name__
    if not isinstance(fn, types.FunctionType):
        raise HelperError(f"{fn!r} is not a plain Python function")
    name = fn.__name__
    if name in out:
        if out[name].origin != f"{fn.__module__}.{fn.__qualname__}":
            raise HelperError(f"two different helper functions are both called {name!r}")
        return name
    if fn.__closure__:
        raise HelperError(f"{fn.__qualname__} is a closure")
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise HelperError(f"source of {fn.__qualname__} is not available: {e}") from None
    tree = ast.parse(src)
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef):
        raise HelperError(f"{fn.__qualname__} is not a def")
    fdef.decorator_list = []
    _StripLogging().visit(fdef)
    out[name] = Helper(name, ast.unparse(fdef) + "\n", f"{fn.__module__}.{fn.__qualname__}")
    used = dict.fromkeys(n.id for n in ast.walk(fdef) if isinstance(n, ast.Name))  # code and annotations
    local = set(fn.__code__.co_varnames) | set(fn.__code__.co_cellvars)  # arguments and locals shadow globals
    for g in used:
        if g in fn.__globals__ and g not in local:
            _resolve_global(g, fn.__globals__[g], fn, out, fdef)
    return name


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
                    tree: ast.AST | None = None) -> None:
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
            out.setdefault(f"import:{name}", Helper(f"import:{name}", f"import {value.__name__}{alias}\n", ""))
            return
        raise HelperError(f"{fn.__qualname__} uses module {value.__name__!r}, which model.py may not import")
    if getattr(builtins, name, None) is value:
        return
    if value is typing.Optional or getattr(typing, name, None) is value:
        out.setdefault(f"import:{name}", Helper(f"import:{name}", f"from typing import {name}\n", ""))
        return
    mod = getattr(value, "__module__", "") or ""
    vname = str(getattr(value, "__name__", ""))
    if mod in _STDLIB and vname and getattr(__import__(mod), vname, None) is value:
        alias = "" if vname == name else f" as {name}"
        out.setdefault(f"import:{name}", Helper(f"import:{name}", f"from {mod} import {vname}{alias}\n", ""))
        return
    if callable(value) and (mod == "torch" or mod.startswith("torch.")):
        raise HelperError(f"{fn.__qualname__} uses {name} from {value.__module__}; only torch, F and nn are "
                          "available in model.py")
    if isinstance(value, (types.FunctionType, type)):
        _collect(value, out)
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
        out.setdefault("import:math", Helper("import:math", "import math\n", ""))
    out.setdefault(f"const:{name}", Helper(f"const:{name}", const, fn.__module__))


__all__ = ["HelperError", "collect", "collections", "enum_api_use", "unpatched"]

"""Copy plain Python helper functions a forward calls into the IR (``Helper``).

fx keeps functions marked with ``torch.fx.wrap`` (torchvision's
``stochastic_depth``, swin's ``shifted_window_attention``) as opaque calls. The
emitted ``model.py`` must not import the model's package, so the function's source is
copied: its decorators dropped, the globals it reads resolved to torch imports,
constants, or further helpers copied the same way. Anything else is refused with a
reason, and the calling block stays opaque.
"""

from __future__ import annotations

import ast
import builtins
import collections
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any

import torch

from torchgraft.ir.model import Helper

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


def _constant_source(name: str, value: Any) -> str | None:
    if isinstance(value, (int, float, str, bool, type(None))) and not isinstance(value, type):
        return f"{name} = {value!r}\n"
    return None


def collect(fn: Callable[..., Any], out: dict[str, Helper]) -> str:
    """Add ``fn`` (and what it needs) to ``out``; return the name it is emitted under."""
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
    for g in used:
        if g in fn.__globals__:
            _resolve_global(g, fn.__globals__[g], fn, out)
    return name


def _resolve_global(name: str, value: Any, fn: Callable[..., Any], out: dict[str, Helper]) -> None:
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
        collect(value, out)
        return
    const = _constant_source(name, value)
    if const is None:
        raise HelperError(f"{fn.__qualname__} reads global {name!r} of type {type(value).__name__}")
    out.setdefault(f"const:{name}", Helper(f"const:{name}", const, fn.__module__))


__all__ = ["HelperError", "collect", "collections"]

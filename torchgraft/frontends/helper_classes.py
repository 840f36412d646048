"""Copy plain helper classes a forward uses (torchvision's ``ImageList``, ``LevelMapper``, ``BoxCoder``).

A helper class is copied like a helper function (``helpers.collect``): its source with the
globals every method reads resolved (torch imports, constants, further helpers), so that
``model.py`` defines the same class without importing the model's package. Only classes
that stand alone are copied: no base class but ``object``, no decorator, no metaclass, and
a body made of methods, docstrings and constant assignments. Anything else is refused with
the reason (``HelperError``).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from typing import Any

from torchgraft.ir.model import Helper


def _class_def(cls: type) -> ast.ClassDef:
    from torchgraft.frontends.helpers import HelperError

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError) as e:
        raise HelperError(f"the source of class {cls.__qualname__} is not available: {e}") from None
    cdef = tree.body[0]
    if not isinstance(cdef, ast.ClassDef) or cdef.name != cls.__name__:
        raise HelperError(f"{cls.__qualname__} is not a plain class statement")
    if type(cls) is not type or cdef.decorator_list or cdef.keywords or not _plain_bases(cls, cdef):
        raise HelperError(f"class {cls.__qualname__} has a decorator, a metaclass or a base class that is not "
                          "itself a plain class of the model's code; only plain classes are copied")
    if "<locals>" in cls.__qualname__:
        raise HelperError(f"class {cls.__qualname__} is defined inside a function")
    return cdef


def _plain_bases(cls: type, cdef: ast.ClassDef) -> bool:
    """Whether every base is ``object`` or a plain class (copied too), named as a global of ``cls``'s module."""
    if cls.__bases__ == (object,):
        return not cdef.bases or (len(cdef.bases) == 1 and ast.unparse(cdef.bases[0]) == "object")
    namespace = vars(sys.modules[cls.__module__])
    return len(cdef.bases) == len(cls.__bases__) and all(
        isinstance(b, ast.Name) and namespace.get(b.id) is base and "__slots__" not in vars(base)
        and base.__module__ not in ("builtins", "typing", "collections", "enum", "abc")
        for b, base in zip(cdef.bases, cls.__bases__))


def _methods(cls: type, cdef: ast.ClassDef) -> list[tuple[ast.FunctionDef, types.FunctionType]]:
    """Each method's def and its function object (staticmethod/classmethod/property unwrapped)."""
    from torchgraft.frontends.helpers import HelperError

    out = []
    for stmt in cdef.body:
        if isinstance(stmt, ast.FunctionDef):
            raw = vars(cls).get(stmt.name)
            fn = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
            if not isinstance(fn, types.FunctionType) or fn.__code__.co_freevars not in ((), ("__class__",)):
                raise HelperError(f"{cls.__qualname__}.{stmt.name} is not a plain method")
            if any(not (isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod", "property"))
                   for d in stmt.decorator_list):
                raise HelperError(f"{cls.__qualname__}.{stmt.name} has a decorator")
            out.append((stmt, fn))
        elif not _plain_statement(stmt):
            raise HelperError(f"class {cls.__qualname__} has a class-level statement that is not a method, "
                              f"docstring or constant: {ast.unparse(stmt)[:80]}")
    return out


def _plain_statement(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # a docstring
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        value = stmt.value
        return value is None or all(isinstance(n, (ast.Constant, ast.UnaryOp, ast.USub, ast.UAdd, ast.Tuple,
                                                   ast.Dict, ast.List, ast.Load, ast.Name, ast.Subscript,
                                                   ast.Store))
                                    for n in ast.walk(value))
    return isinstance(stmt, ast.Pass)


def collect_class(cls: type, out: dict[str, Helper]) -> str:
    """Add the plain class ``cls`` and what its methods read to ``out``; return its name (HelperError if not)."""
    from torchgraft.frontends.helpers import _StripLogging, free_name, resolve_globals

    origin = f"{cls.__module__}.{cls.__qualname__}"
    name, done = free_name(cls.__name__, origin, out)
    if done:
        return name
    cdef = _class_def(cls)
    cdef.name = name
    methods = _methods(cls, cdef)
    _StripLogging().visit(cdef)
    out[name] = Helper(name, "", origin)  # placeholder while what it reads is resolved (self-reference)
    for fdef, fn in methods:
        fdef.decorator_list = [d for d in fdef.decorator_list if isinstance(d, ast.Name)]
        resolve_globals(fdef, fn, fn.__globals__, out)
    namespace: dict[str, Any] = vars(sys.modules[cls.__module__])
    for base in cdef.bases:  # the base classes are copied first (model.py orders classes after their bases)
        resolve_globals(base, cls, namespace, out, set())
    bound = {t.id for s in cdef.body if isinstance(s, (ast.Assign, ast.AnnAssign))
             for t in ast.walk(s) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    for stmt in cdef.body:
        if not isinstance(stmt, ast.FunctionDef):
            resolve_globals(stmt, cls, namespace, out, bound)
    del out[name]  # re-added after what it needs
    out[name] = Helper(name, ast.unparse(cdef) + "\n", origin)
    return name


__all__ = ["collect_class"]

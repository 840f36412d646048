"""Copy a block's ``forward`` source into the IR when no tracer can capture it.

For forwards whose control flow depends on the data (``if x.sum() > 0:``), tracing
would bake one branch in. Copying the method keeps both: ``forward`` and the methods
it calls on ``self`` are copied (decorators dropped), the plain attributes it reads
(``self.scale``) become constructor-time constants, and the globals it uses resolve
like helper functions (torch imports, constants, further copied functions). Attributes that
hold objects of the model's plain helper classes (torchvision's ``self.box_coder``), helper
functions, small tensors, or lists and dicts of them are rebuilt in the emitted ``__init__``
(``helper_objects``). Anything else (``super()``, closures, objects that cannot be rebuilt) is
refused with a reason, and a refused copy adds nothing to the helper table.

Constants are written as plain literals (numpy scalars and int/str Enum members as the
number or string they equal, ``float("inf")``); a forward that reads an Enum-only
attribute of one (``self.mode.value``) is refused, since its copy would hold the value.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from typing import Any

from torch import nn

from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.helper_objects import attr_value
from torchgraft.frontends.helpers import HelperError, enum_api_use, resolve_globals
from torchgraft.frontends.state import as_self
from torchgraft.ir.attr_values import AttrValue
from torchgraft.ir.model import Helper
from torchgraft.ir.nodes import PySource
from torchgraft.ir.values import const_arg


def _method_source(fn: types.FunctionType) -> ast.FunctionDef:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError) as e:
        raise TraceError(f"the source of {fn.__qualname__} is not available: {e}") from None
    fdef = as_self(tree).body[0]  # type: ignore[attr-defined]
    if not isinstance(fdef, ast.FunctionDef):
        raise TraceError(f"{fn.__qualname__} is not a plain def")
    fdef.decorator_list = []
    return fdef


def _self_attrs(fdef: ast.FunctionDef) -> list[str]:
    """The ``self.<attr>`` names the method reads (one it only assigns, ``self.x = v``, needs no value)."""
    found = [n for n in ast.walk(fdef) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id == "self"]
    augmented = {id(n.target) for n in ast.walk(fdef) if isinstance(n, ast.AugAssign)}
    read = {n.attr for n in found if not isinstance(n.ctx, ast.Store) or id(n) in augmented}
    return [a for a in dict.fromkeys(n.attr for n in found) if a in read]


def _stored_attrs(fdef: ast.FunctionDef) -> set[str]:
    """``self.<attr>`` names the method assigns (``self.corr_pyramid = [...]``): state the copied methods
    make at run time (RAFT's ``CorrBlock.build_pyramid`` before ``index_pyramid``), needing no value
    at capture; read before any assignment, it raises ``AttributeError`` in the emitted model."""
    return {t.attr for n in ast.walk(fdef) if isinstance(n, ast.Assign) for t in n.targets
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def copy_forward(mod: nn.Module, helpers: dict[str, Helper]) -> PySource:
    """The PySource body for ``mod`` (TraceError with the reason when it cannot be copied).

    The helpers it needs are added to ``helpers`` only when the whole copy succeeds.
    """
    staged = dict(helpers)
    body = _copy_methods(mod, staged)
    helpers.update(staged)
    return body


def copy_methods(mod: nn.Module, helpers: dict[str, Helper], roots: tuple[str, ...]
                 ) -> tuple[str, tuple[tuple[str, AttrValue], ...]]:
    """(source, attrs): the methods ``roots`` of ``mod``'s class and the methods they call, copied as
    ``copy_forward`` copies a forward (TraceError when they cannot be; ``helpers`` then unchanged)."""
    staged = dict(helpers)
    out = _collect(mod, staged, roots)
    helpers.update(staged)
    return out


def _copy_methods(mod: nn.Module, helpers: dict[str, Helper]) -> PySource:
    return PySource(*_collect(mod, helpers, ("forward",)))


def _collect(mod: nn.Module, helpers: dict[str, Helper], roots: tuple[str, ...]
             ) -> tuple[str, tuple[tuple[str, AttrValue], ...]]:
    cls = type(mod)
    todo: list[str] = list(roots)
    defs: dict[str, ast.FunctionDef] = {}
    attrs: dict[str, AttrValue] = {}
    unvalued: dict[str, str] = {}  # attributes with no constant value -> the method reading them
    while todo:
        name = todo.pop()
        fn = getattr(cls, name, None)
        if not isinstance(fn, types.FunctionType) or fn.__closure__:
            raise TraceError(f"{cls.__qualname__}.{name} is not a plain method")
        fdef = _method_source(fn)
        if any(isinstance(n, ast.Name) and n.id == "super" for n in ast.walk(fdef)):
            raise TraceError(f"{cls.__qualname__}.{name} calls super(); its source cannot stand alone")
        defs[name] = fdef
        for attr in _self_attrs(fdef):
            try:
                _classify(mod, attr, todo, defs, attrs, helpers)
            except TraceError:
                unvalued.setdefault(attr, name)
                continue
            _check_enum_use(mod, attr, fdef)
        _globals(fdef, fn, helpers)
    stored = {a for d in defs.values() for a in _stored_attrs(d)}
    for attr in unvalued.keys() - stored:  # read, never assigned by the copied methods, and no value to give
        _classify(mod, attr, todo, defs, attrs, helpers)
    source = "\n\n".join(ast.unparse(defs[n]) for n in [*roots, *sorted(set(defs) - set(roots))])
    return source + "\n", tuple(sorted(attrs.items()))


def _classify(mod: nn.Module, attr: str, todo: list[str], defs: dict[str, Any], attrs: dict[str, AttrValue],
              helpers: dict[str, Helper] | None = None) -> None:
    if attr in mod._modules or attr in mod._parameters or attr in mod._buffers or attr == "training":
        return
    cls_attr = getattr(type(mod), attr, None)
    if isinstance(cls_attr, types.FunctionType) and cls_attr.__qualname__.split(".")[0] not in ("Module",):
        if attr not in defs and attr not in todo:
            todo.append(attr)
        return
    if attr in mod.__dict__:
        try:
            attrs[attr] = const_arg(mod.__dict__[attr])
            return
        except Exception:
            pass
        if helpers is not None:  # an object built from the model's helpers (BoxCoder), a small tensor
            attrs[attr] = attr_value(mod.__dict__[attr], helpers, f"self.{attr}")
            return
    if hasattr(nn.Module, attr):
        return  # nn.Module API (self.register_buffer, self.modules, ...)
    raise TraceError(f"the forward reads self.{attr}, a {type(getattr(mod, attr, None)).__name__} that is "
                     "not a constant, child, parameter or buffer")


def _check_enum_use(mod: nn.Module, attr: str, fdef: ast.FunctionDef) -> None:
    def is_use(e: ast.expr) -> bool:
        return (isinstance(e, ast.Attribute) and e.attr == attr and isinstance(e.value, ast.Name)
                and e.value.id == "self")

    found = enum_api_use(fdef, is_use, mod.__dict__.get(attr))
    if found is not None:
        raise TraceError(f"the forward reads self.{attr}.{found} of an Enum attribute, which is copied as its value")


def _globals(fdef: ast.FunctionDef, fn: types.FunctionType, helpers: dict[str, Helper]) -> None:
    try:
        resolve_globals(fdef, fn, fn.__globals__, helpers)  # may rewrite ``box_ops.f`` to the copied ``f``
    except HelperError as e:
        raise TraceError(str(e)) from None

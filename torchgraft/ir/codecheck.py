"""Checks of the IR fields that emission writes as code: what makes the JSON form safe to emit.

A model read from JSON is untrusted input. ``emit`` writes some of its strings as code, not as
string literals: function qualnames (of ``FunctionCall`` ops and of ``call`` Combines), keyword-argument
names, class names and Opaque class references, helper names. ``code_problems`` lists every such field
that is not what capture produces (an allow-listed function, an identifier, a dotted name of a class), so that
``verify`` refuses it before ``emit`` runs. Nothing here imports or calls anything named in the IR.

Copied sources (``PySource``, ``Helper.source``, ``StateMethods.source``) ARE code and cannot be
checked: the emitted ``model.py`` runs them. Only emit a JSON file that holds them when it is trusted.
"""

from __future__ import annotations

import functools
import keyword
import sys
from collections.abc import Iterator, Set

from torch import nn

from torchgraft.errors import IRError
from torchgraft.ir import checkmemo
from torchgraft.ir.functions import helper_name, resolve
from torchgraft.ir.graph import FunctionCall, Graph
from torchgraft.ir.model import HelperKind, Model
from torchgraft.ir.nodes import (
    Block,
    Chain,
    ClassRef,
    CombineKind,
    Node,
    Opaque,
    Parallel,
    SkipConnection,
    module_children,
)
from torchgraft.ir.traverse import walk

"""Prefixes of helpers that are not functions (import lines, module constants)."""


def _ident(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier() and name.isascii() and not keyword.iskeyword(name)


def _where(path: str) -> str:
    return path or "<root>"


def _class_ref(ref: ClassRef, where: str, what: str) -> Iterator[str]:
    if not all(_ident(p) for p in ref.module.split(".")):
        yield (f"{where}: {what} module {ref.module!r} is not a dotted name of identifiers; the emitted code "
               "names it, so it must be a Python module path")
    if not all(_ident(p) or p == "<locals>" for p in ref.qualname.split(".")):
        yield (f"{where}: {what} qualname {ref.qualname!r} is not a dotted name of identifiers; the emitted "
               "code names the class, so it must be a Python class name")


def _loaded_object(ref: ClassRef) -> tuple[bool, object]:
    """(True, the object) when ``ref``'s module is already imported; nothing is imported here."""
    module = sys.modules.get(ref.module)
    if module is None:
        return False, None
    obj: object = module
    for part in ref.qualname.split("."):
        obj = getattr(obj, part, None)
    return True, obj


def _opaque(node: Opaque, where: str) -> Iterator[str]:
    found = list(_class_ref(node.cls, where, "Opaque class"))
    yield from found
    bad = [k for k, _ in node.ctor or () if not _ident(k)]
    if bad:
        yield f"{where}: Opaque constructor keyword names {bad!r} are not identifiers; use plain argument names"
    if found:
        return
    top = node.cls.module.split(".")[0]
    if top == "builtins" or top in sys.stdlib_module_names:
        yield (f"{where}: Opaque class {node.cls} is from the standard library, which holds no nn.Module; "
               "an Opaque must name the module class it keeps")
        return
    loaded, obj = _loaded_object(node.cls)
    if top in sys.modules and not loaded:
        yield (f"{where}: Opaque class module {node.cls.module!r} is not imported, so {node.cls} cannot be "
               "checked to be an nn.Module class; import it before verifying")
    elif loaded and not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        yield f"{where}: Opaque class {node.cls} is not an nn.Module class; an Opaque must name a module class"


def _functions(graph: Graph, where: str, helpers: Set[str]) -> Iterator[str]:
    for op in graph.ops:
        t = op.target
        if not isinstance(t, FunctionCall):
            continue
        if helper_name(t.qualname) is not None:
            if helper_name(t.qualname) not in helpers:
                yield (f"{where}: op {op.name!r} calls {t.qualname!r}, but the model has no such helper "
                       f"(helpers: {sorted(helpers)}); helper calls must name one of Model.helpers")
            continue
        try:
            resolve(t.qualname)
        except IRError as e:
            yield f"{where}: op {op.name!r} calls {t.qualname!r}: {e}; only allow-listed functions can be called"


def _combine(node: Node, where: str) -> Iterator[str]:
    """A ``call`` combine names an allow-listed function (emission writes it as code, or calls it)."""
    if not isinstance(node, (Parallel, SkipConnection)) or node.combine.kind is not CombineKind.CALL:
        return
    try:
        resolve(node.combine.fn)
    except IRError as e:
        yield (f"{where}: {type(node).__name__} combine calls {node.combine.fn!r}: {e}; only allow-listed "
               "functions of two tensors can join values")


def _helpers(model: Model) -> Iterator[str]:
    for h in model.helpers:
        dotted = h.kind is not HelperKind.FUNCTION  # an import or constant binds a dotted name
        if not isinstance(h.name, str) or not all(_ident(p) for p in h.name.split(".")) \
                or (not dotted and "." in h.name):
            yield (f"helper name {h.name!r} ({h.kind.value}) is not an identifier (a dotted name for an import or "
                   "a constant); the emitted code defines and calls it by that name")


def helper_names(model: Model) -> frozenset[str]:
    """The names of the model's FUNCTION helpers: what a ``helpers.<name>`` call may name."""
    return frozenset(h.name for h in model.helpers if h.kind is HelperKind.FUNCTION)


def helper_problems(model: Model) -> list[str]:
    """The problems of the model's helper names (not of any node)."""
    return list(_helpers(model))


def _ref_ok(ref: ClassRef) -> bool:
    """True when ``_class_ref`` finds nothing in ``ref`` (a pure function of its two strings, cached)."""
    if type(ref) is not ClassRef or type(ref.module) is not str or type(ref.qualname) is not str:
        return False  # checked in full every time
    return _names_ok(ref.module, ref.qualname)


@functools.lru_cache(maxsize=4096)
def _names_ok(module: str, qualname: str) -> bool:
    return next(_class_ref(ClassRef(module, qualname), "", ""), None) is None


def body_code(sub: Node, where: str, helpers: Set[str]) -> list[str]:
    """The code problems of one node of a Block body (``where``: the Block's path): a Graph's calls, a join's
    ``call`` combine. Its own children are not looked at."""
    if isinstance(sub, Graph):
        return list(_functions(sub, where, helpers))
    return list(_combine(sub, where))


def node_code_problems(node: Node, where: str, helpers: Set[str], bodies: bool = True) -> list[str]:
    """The problems ``code_problems`` finds in ``node`` itself (a Block: its class and, with ``bodies``, every
    node of its bodies, see ``body_code``; not its children, which a walk visits on their own). ``helpers``:
    ``helper_names(model)``.

    A function of ``node`` and ``helpers`` alone, except for an ``Opaque``, whose check reads
    ``sys.modules``. (An allow-listed function is looked up in torch's namespaces, which are taken as fixed.)
    """
    if not isinstance(node, Block):
        if isinstance(node, Opaque):
            return list(_opaque(node, where))
        if isinstance(node, (Parallel, SkipConnection)):
            return list(_combine(node, where))
        if isinstance(node, Chain) and node.cls is not None and not _ref_ok(node.cls):
            return list(_class_ref(node.cls, where, "Chain class"))
        return []
    out = [] if _ref_ok(node.cls) else list(_class_ref(node.cls, where, "Block class"))
    for body in (node.body, node.train_body) if bodies else ():
        stack = [] if body is None else [body]
        while stack:  # a ``walk`` of the body, parents first
            sub = stack.pop()
            if isinstance(sub, (Graph, Parallel, SkipConnection)):
                out += body_code(sub, where, helpers)
            kids = module_children(sub)
            if kids:
                stack.extend([k for _, k in reversed(kids)])
    return out


def code_problems(model: Model) -> Iterator[str]:
    """Every field ``emit`` would write as code that is not a safe name (see the module docstring).

    A node found clean is remembered by identity (``ir.checkmemo``), with the model's helper names:
    the model a pass returns is re-checked only where the pass rebuilt it. ``Opaque`` nodes are
    checked every time (their check reads ``sys.modules``).
    """
    helpers = helper_names(model)
    yield from _helpers(model)
    clean = checkmemo.tables(("code", helpers))
    for path, node in walk(model.root):
        if clean is not None and clean.get(id(node)) is node:
            continue
        found = node_code_problems(node, _where(path), helpers)
        if found:
            yield from found
        elif clean is not None and not isinstance(node, Opaque):
            clean[id(node)] = node

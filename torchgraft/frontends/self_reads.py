"""Which attributes of ``self`` a forward reads, and how: found in its source, or None when it cannot tell.

``reads(fn)`` lists each ``self.a.b`` chain in ``fn`` with its use: ``call`` (``self.conv(x)``),
``none`` (``self.down is None``) or ``value`` (anything else). It answers None, meaning "could read
anything", when ``self`` is used other than through such chains (passed to a function,
``getattr(self, ...)``), for ``super()``, ``vars``/``locals``/``globals``/``eval``/``exec``,
``global``/``nonlocal``, writes to an attribute or item of something not local to the call, ``self``
attributes assigned, a closure or decorated function, and source that does not match the running
code (its file edited since import: the bytecode's positions of ``self`` chains and writes are
checked against the source's). Used by ``frontends.trace_reuse``.

>>> class M(nn.Module):
...     def forward(self, x):
...         return self.fc(x) * self.scale
>>> sorted(reads(M.forward))
[(('fc',), 'call'), (('scale',), 'value')]
"""

from __future__ import annotations

import ast
import dis
import functools
import linecache
import types
from typing import Any

from torch import nn  # noqa: F401 - the doctest's

from torchgraft.frontends.state import method_tree

Read = tuple[tuple[str, ...], str]
"""(attribute chain from self, how it is used: call / none / value)"""
_REFUSED_NAMES = frozenset({"super", "vars", "locals", "globals", "eval", "exec", "__class__"})


class _Unclear(Exception):
    """The source cannot say what the function reads."""


@functools.lru_cache(maxsize=1024)
def reads(fn: Any) -> tuple[Read, ...] | None:
    """The ``self`` attribute chains ``fn`` reads and how, or None when its source cannot tell (cached).

    >>> reads(nn.Identity.forward)
    ()
    """
    if not isinstance(fn, types.FunctionType) or hasattr(fn, "__wrapped__") or fn.__closure__:
        return None
    code = fn.__code__
    if code.co_argcount == 0 or code.co_varnames[0] != "self":
        return None
    tree = method_tree(fn)
    fdef = tree.body[0] if isinstance(tree, ast.Module) and tree.body else None
    if not isinstance(fdef, ast.FunctionDef) or fdef.name != fn.__name__:
        return None
    try:
        found = _chains(fdef)
        if not _matches_code(fdef, fn):
            return None
    except _Unclear:
        return None
    return tuple(dict.fromkeys(found))


def _matches_code(fdef: ast.FunctionDef, fn: types.FunctionType) -> bool:
    """Whether the parsed source is the running code (not a file edited since import), as far as what
    ``reads`` concludes goes: the same ``self`` chains at the same places (and the same ``is None``
    tests of them), the same attribute and item writes at the same places, no global written, none
    of ``vars``/``locals``/``globals``/``eval``/``exec`` called. Read off the bytecode's positions."""
    code = fn.__code__
    first = linecache.getline(code.co_filename, code.co_firstlineno)
    indent, shift = len(first) - len(first.lstrip()), code.co_firstlineno - 1
    chains_ast, stores_ast = set(), set()
    for node, chain, use in _tops(fdef):
        chains_ast.add((_place(node, shift, indent), chain, use == "none"))
    for node in ast.walk(fdef):
        if isinstance(node, (ast.Attribute, ast.Subscript)) and not isinstance(node.ctx, ast.Load):
            stores_ast.add(_place(node, shift, indent))
    found = _code_facts(code)
    return found is not None and found == (chains_ast, stores_ast)


def _place(node: ast.AST, shift: int, indent: int) -> tuple[int, int, int, int]:
    """A node's span in the file (the source was parsed dedented, from its first line)."""
    end_line = getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]
    end_col = getattr(node, "end_col_offset", None) or 0
    return (node.lineno + shift, end_line + shift, node.col_offset + indent, end_col + indent)  # type: ignore[attr-defined]


_NONE_JUMPS = frozenset({"POP_JUMP_FORWARD_IF_NONE", "POP_JUMP_FORWARD_IF_NOT_NONE", "POP_JUMP_BACKWARD_IF_NONE",
                         "POP_JUMP_BACKWARD_IF_NOT_NONE", "POP_JUMP_IF_NONE", "POP_JUMP_IF_NOT_NONE"})
_WRITES = frozenset({"STORE_ATTR", "DELETE_ATTR", "STORE_SUBSCR", "DELETE_SUBSCR"})


def _code_facts(code: types.CodeType) -> tuple[set[Any], set[Any]] | None:
    """({(span, chain, is-None test)} of the ``self`` chains, {span} of the writes) in ``code`` and the code
    nested in it; None where the bytecode says more than they can (bare ``self``, a global written)."""
    chains: set[Any] = set()
    stores: set[Any] = set()
    todo = [code]
    while todo:
        ins = list(dis.get_instructions(todo.pop()))
        for i, x in enumerate(ins):
            if isinstance(x.argval, types.CodeType):
                todo.append(x.argval)
            if x.opname in ("STORE_GLOBAL", "DELETE_GLOBAL") or (
                    x.opname in ("LOAD_GLOBAL", "LOAD_NAME") and x.argval in _REFUSED_NAMES):
                return None
            if x.opname in _WRITES:
                stores.add(_span(x))
            if x.opname not in ("LOAD_FAST", "LOAD_DEREF") or x.argval != "self":
                continue
            j, chain = i + 1, []
            while j < len(ins) and ins[j].opname in ("LOAD_ATTR", "LOAD_METHOD"):
                chain.append(ins[j].argval)
                j += 1
            if not chain or (j < len(ins) and ins[j].opname in ("STORE_ATTR", "DELETE_ATTR")):
                return None  # self passed on, or its attribute written
            nxt = ins[j].opname if j < len(ins) else ""
            none = nxt in _NONE_JUMPS or (nxt == "LOAD_CONST" and ins[j].argval is None and j + 1 < len(ins)
                                          and ins[j + 1].opname == "IS_OP") or (
                nxt == "IS_OP" and i > 0 and ins[i - 1].opname == "LOAD_CONST" and ins[i - 1].argval is None)
            chains.add((_span(ins[j - 1]), tuple(chain), none))
    return chains, stores


def _span(ins: dis.Instruction) -> tuple[int, int, int, int] | None:
    p = ins.positions
    return None if p is None else (p.lineno, p.end_lineno, p.col_offset, p.end_col_offset)  # type: ignore[return-value]


def _chains(fdef: ast.FunctionDef) -> list[Read]:
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(fdef):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            raise _Unclear
        if isinstance(node, ast.Name) and node.id in _REFUSED_NAMES:
            raise _Unclear
        if isinstance(node, (ast.Attribute, ast.Subscript)) and not isinstance(node.ctx, ast.Load) \
                and not _local_root(node, fdef):
            raise _Unclear  # writes an attribute or item of something not local to the call
    return [(chain, use) for _, chain, use in _tops(fdef, parents)]


def _tops(fdef: ast.FunctionDef, parents: dict[int, ast.AST] | None = None
          ) -> list[tuple[ast.AST, tuple[str, ...], str]]:
    """(outermost node, chain, use) of each ``self.a.b`` in ``fdef``."""
    if parents is None:
        parents = {id(c): n for n in ast.walk(fdef) for c in ast.iter_child_nodes(n)}
    out = []
    for node in ast.walk(fdef):
        if not (isinstance(node, ast.Name) and node.id == "self"):
            continue
        chain: list[str] = []
        top: ast.AST = node
        parent = parents.get(id(top))
        while isinstance(parent, ast.Attribute) and parent.value is top:
            chain.append(parent.attr)
            top, parent = parent, parents.get(id(parent))
        if not chain or not isinstance(getattr(top, "ctx", None), ast.Load):
            raise _Unclear  # bare self (passed on, getattr(self, ...)) or self.x assigned
        out.append((top, tuple(chain), _use(top, parent)))
    return out


def _local_root(node: ast.expr, fdef: ast.FunctionDef) -> bool:
    """Whether the object written (``out.x = ...``, ``y[0] = ...``) is a local variable other than self."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    if not isinstance(node, ast.Name) or node.id == "self":
        return False
    assigned = {n.id for n in ast.walk(fdef) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return node.id in assigned or node.id in {a.arg for a in fdef.args.args + fdef.args.kwonlyargs}


def _use(top: ast.AST, parent: ast.AST | None) -> str:
    if isinstance(parent, ast.Call) and parent.func is top:
        return "call"
    if isinstance(parent, ast.Compare) and len(parent.ops) == 1 and isinstance(parent.ops[0], (ast.Is, ast.IsNot)):
        other = parent.comparators[0] if parent.left is top else parent.left
        if isinstance(other, ast.Constant) and other.value is None:
            return "none"
    return "value"


__all__ = ["Read", "reads"]

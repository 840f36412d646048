"""What a call passes for a parameter and what a guard on it checks, decided without running anything.

Used by ``trim_calls`` to drop a parameter with its guards, or a guard alone, only where every call
provably passes a value the guard accepts: a constant, a tensor a primitive or a tensor method made
(never None), a tuple literal of known length, or a parameter of the caller that the caller's own
guards (or its callers) already pin down (``known_inputs``). Any doubt is ``Unknown``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

from torchgraft.ir.effects import is_pure
from torchgraft.ir.functions import resolve
from torchgraft.ir.graph import FunctionCall, Graph, Guard, Input, InputKind, MethodCall, Op, PrimCall
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Arg, Const, DictArg, Ref, Seq

NAMED = (InputKind.POSITIONAL, InputKind.KEYWORD)


class Unknown(Exception):
    """What a call passes cannot be known statically."""


class Hidden:
    """A value passed at run time (a tensor): a guard may test it with ``is``/``is not`` only, anything else
    raises. Stands at top level only for values known not to be None; inside a tuple or ``**kwargs`` for any."""

    def _refuse(self, *_: object) -> Any:  # noqa: ANN401
        raise Unknown

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _refuse
    __hash__ = None  # type: ignore[assignment]




@dataclass(frozen=True)
class Check:
    """One argument guard on a parameter: ``guard(cond(feed(param)))`` (``feed`` optional)."""

    feed: Op | None
    cond: Op



def bind(inputs: tuple[Input, ...], op: Op) -> dict[str, int | str | tuple[str, ...]] | None:
    """Input name -> how the call passes it: positional index, keyword, or (for ``**kwargs``) the keywords
    that land in it. None when the call does not bind (too many positionals, unknown keyword, a repeat)."""
    positional = [i.name for i in inputs if i.kind is InputKind.POSITIONAL]
    named = {i.name for i in inputs if i.kind in NAMED}
    var_kw = next((i.name for i in inputs if i.kind is InputKind.VAR_KEYWORD), None)
    if len(op.args) > len(positional) and not any(i.kind is InputKind.VAR_POSITIONAL for i in inputs):
        return None
    out: dict[str, int | str | tuple[str, ...]] = {n: k for k, n in enumerate(positional[:len(op.args)])}
    landed = []
    for key, _ in op.kwargs:
        if key in out or (key not in named and var_kw is None):
            return None
        if key in named:
            out[key] = key
        else:
            landed.append(key)
    if var_kw is not None:
        out[var_kw] = tuple(landed)
    if any(i.kind in NAMED and i.name not in out and i.default is None for i in inputs):
        return None
    return out


def passed(inp: Input, where: int | str | tuple[str, ...] | None, op: Op, parent: Graph) -> object:
    """What the call passes for ``inp``, as far as the guards may look at it."""
    if isinstance(where, tuple):
        kwargs = dict(op.kwargs)
        return {k: static(kwargs[k], parent, top=False) for k in where}
    if where is None:
        if inp.default is None:
            raise Unknown
        return inp.default.value
    arg = op.args[where] if isinstance(where, int) else dict(op.kwargs)[where]
    return static(arg, parent, top=True)


def static(arg: Arg, g: Graph, top: bool) -> object:
    """``arg``'s value at the call: a constant, or ``Hidden`` for a value known not to be None (nested in a
    tuple or dict, any value: a guard can count them but not look at them)."""
    if isinstance(arg, Const):
        return arg.value
    if isinstance(arg, Ref):
        pin = pinned(arg.name, g) if top else None
        if pin is not None:
            return pin
        if top and not never_none(arg.name, g):
            raise Unknown
        return Hidden()
    if isinstance(arg, Seq):
        items = [static(a, g, top=False) for a in arg.items]
        return items if arg.is_list else tuple(items)
    if isinstance(arg, DictArg):
        return {k: static(a, g, top=False) for k, a in arg.items}
    raise Unknown


class Pinned:
    """A parameter of the caller that the caller's own argument guards pin down: not None, and ``length``
    items long when a guard counts them (``len(x) == 2``). Anything else a guard asks of it is ``Unknown``."""

    def __init__(self, length: int | None) -> None:
        self.length = length

    def __len__(self) -> int:
        if self.length is None:
            raise Unknown
        return self.length

    def _refuse(self, *_: object) -> Any:  # noqa: ANN401
        raise Unknown

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __iter__ = __contains__ = _refuse
    __hash__ = None  # type: ignore[assignment]


def pinned(name: str, g: Graph) -> Pinned | None:
    """``Pinned`` for an input of ``g`` that an argument guard of ``g`` checks is not None or counts (a guard
    that would raise for None); None otherwise. The guard may still be removed later: it is removed only when
    every caller passes what it accepts, so what it pins stays true."""
    if not any(i.name == name for i in g.inputs):
        return None
    facts = [_fact(c) for c in argument_guards(g, name)[1]]
    lengths = [f for f in facts if isinstance(f, int) and not isinstance(f, bool)]
    if not facts or not any(f is True or isinstance(f, int) for f in facts):
        return None
    return Pinned(lengths[0] if lengths else None)


def _fact(check: Check) -> bool | int | None:
    """What a passing ``check`` says of its input: True (not None), an int (its length), None (nothing used)."""
    fn = resolve(check.cond.target.qualname) if isinstance(check.cond.target, FunctionCall) else None
    consts = [a.value for a in check.cond.args if isinstance(a, Const)]
    if check.feed is None:
        return True if fn is operator.is_not and consts == [None] else None
    feed = resolve(check.feed.target.qualname) if isinstance(check.feed.target, FunctionCall) else None
    if feed is len and fn is operator.eq and len(consts) == 1 and type(consts[0]) is int:
        return int(consts[0])
    return None


def argument_guards(g: Graph, name: str) -> tuple[set[str], list[Check]]:
    """The argument guards of ``g`` on input ``name`` (direct comparisons, or of ``len(name)``) as the ops that
    make them (guards and comparisons; a ``len`` left unread is pruned later) and their checks. Other reads of
    ``name`` are ignored: ``guard_checks`` is the same walk when they are not allowed."""
    found = _guards(g, name, strict=False)
    assert found is not None
    return found


def _guards(g: Graph, name: str, strict: bool) -> tuple[set[str], list[Check]] | None:
    """The guard ops on ``name`` and their checks; ``strict``: None when ``name`` is read by anything else
    (the ``len`` feeding the guards is then removed with them)."""
    users = g.users()
    ops = {o.name: o for o in g.ops}
    remove: set[str] = set()
    checks: list[Check] = []
    for user in dict.fromkeys(users[name]):
        op = ops.get(user)
        if op is not None and is_cond(op, name, users, ops):
            checks.append(Check(None, op))
            remove |= {op.name, *users[op.name]}
            continue
        conds = [ops.get(c) for c in dict.fromkeys(users[op.name])] if op is not None and is_feed(op, name) else []
        fed = [c for c in conds if c is not None and is_cond(c, user, users, ops)]
        if strict:
            if not conds or len(fed) != len(conds):
                return None
            remove.add(user)
        for cond in fed:
            checks.append(Check(op, cond))
            remove |= {cond.name, *users[cond.name]}
    return remove, checks


def never_none(name: str, g: Graph) -> bool:
    """True for a tensor computed by a primitive or by a method of a tensor: never None, whatever the input."""
    types = {i.name: i.type for i in g.inputs} | {o.name: o.type for o in g.ops}
    op = next((o for o in g.ops if o.name == name), None)
    if op is None or not isinstance(op.type, TensorType):
        return False
    if isinstance(op.target, PrimCall):
        return True
    recv = op.args[0] if op.args else None
    return isinstance(op.target, MethodCall) and isinstance(recv, Ref) and isinstance(types.get(recv.name), TensorType)


def guard_checks(g: Graph, name: str) -> tuple[set[str], list[Check]] | None:
    """When ``g`` reads ``name`` only in argument guards: the ops to remove with it and the checks they make."""
    return _guards(g, name, strict=True)


def is_feed(op: Op, name: str) -> bool:
    """``len(x)``-like: a pure function of ``name`` alone."""
    return isinstance(op.target, FunctionCall) and is_pure(op) and not op.kwargs and op.args == (Ref(name),)


def is_cond(op: Op, name: str, users: dict[str, list[str]], ops: dict[str, Op]) -> bool:
    """A pure comparison of ``name`` with a constant whose result only argument guards read."""
    refs = [a for a in op.args if isinstance(a, Ref)]
    if not (isinstance(op.target, FunctionCall) and is_pure(op) and not op.kwargs and len(op.args) == 2
            and refs == [Ref(name)] and all(isinstance(a, (Ref, Const)) for a in op.args) and users[op.name]):
        return False
    guards = [ops.get(u) for u in users[op.name]]
    return all(g is not None and isinstance(g.target, Guard) and g.target.kind == "argument"
               and g.args == (Ref(op.name),) and not users[g.name] for g in guards)


def holds(check: Check, value: object) -> bool:
    """Whether the guard passes for ``value`` (any doubt: False). The functions are the allow-listed ones the
    graph names (``ir.functions.resolve``: looked up, never evaluated), pure, called on constants."""
    try:
        if check.feed is not None:
            assert isinstance(check.feed.target, FunctionCall)
            value = resolve(check.feed.target.qualname)(value)
        assert isinstance(check.cond.target, FunctionCall)
        args = [value if isinstance(a, Ref) else a.value for a in check.cond.args if isinstance(a, (Ref, Const))]
        return resolve(check.cond.target.qualname)(*args) is True
    except Exception:
        return False


def without_defaults(op: Op, inputs: tuple[Input, ...]) -> Op:
    """The call without keyword arguments equal to the callee's default, nor trailing positional ones."""
    defaults = {i.name: i.default for i in inputs if i.kind in NAMED and i.default is not None}
    kwargs = tuple((k, a) for k, a in op.kwargs if not (isinstance(a, Const) and defaults.get(k) == a))
    positional = [i.name for i in inputs if i.kind is InputKind.POSITIONAL]
    args = list(op.args)
    while args and len(args) <= len(positional) and isinstance(args[-1], Const) \
            and defaults.get(positional[len(args) - 1]) == args[-1]:
        args.pop()
    return replace(op, args=tuple(args), kwargs=kwargs)

"""Calls say only what matters: drop the parameters a child never uses, and arguments equal to defaults.

Capture keeps every parameter of every forward, with a guard per optional one
(``if cache is not None: raise ValueError(...)``), so a child that its parent calls as
``self.attention(h, mask, cache=None, position_ids=None)`` is written with a dozen unused
parameters and as many guards. ``trim_calls`` removes that noise before emission:

- a parameter of a non-root Block whose forward reads it only in argument guards (``Guard`` of
  kind ``"argument"``, and the comparison or ``len`` feeding only them) or not at all is
  removed, with its guards, from the child's signature and from every call of the child
  (the positional arguments after it are then passed by keyword). A ``**kwargs`` read only by its count guard goes
  the same way, and with it the keyword arguments that landed in it;
- an argument equal to the callee's declared default is left out (keywords; positionals when
  trailing).

Repeated bottom-up to a fixpoint: once a child drops a parameter, its parent may no longer read
the value it forwarded (Llama's ``position_ids``, passed only into the attention's ``**kwargs``).

Why this is faithful. The root keeps its full signature and all its guards, so the emitted model
still refuses every call it cannot reproduce. A child is called only by its emitted parents, and
a parameter is dropped only when every call of the child is a ``ChildCall`` in a parent's Graph
that this pass rewrites; each guard removed is checked to hold for what every call passes (the
captured constant, a tensor a method produced, or the keywords a ``**kwargs`` receives), so it
could never fire there. A user who calls a child directly with a dropped argument gets Python's
TypeError: loud, never a silent difference. Left alone: the root; a Block reached from a body
that is not a Graph (copied source, a combinator, ``nn.Sequential``), read as an attribute
(``self.layers`` handed to a helper), or tied to another path; size and dtype guards, which are
not argument guards; ``*args``. Forward hooks are not in the IR: capture refuses models with
them (``frontends/hooks.py``), so no hook can observe the arguments removed here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torchgraft.backends.torch.forward import prune
from torchgraft.ir.effects import is_pure
from torchgraft.ir.functions import resolve
from torchgraft.ir.graph import (
    ChildCall,
    FunctionCall,
    GetAttr,
    Graph,
    Guard,
    Input,
    InputKind,
    MethodCall,
    Op,
    PrimCall,
)
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Container, Node
from torchgraft.ir.traverse import join, map_tree, walk
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Arg, Const, DictArg, Ref, Seq

_NAMED = (InputKind.POSITIONAL, InputKind.KEYWORD)


class _Unknown(Exception):
    """What a call passes cannot be known statically."""


class _Hidden:
    """A value passed at run time (a tensor): a guard may test it with ``is``/``is not`` only, anything else
    raises. Stands at top level only for values known not to be None; inside a tuple or ``**kwargs`` for any."""

    def _refuse(self, *_: object) -> Any:  # noqa: ANN401
        raise _Unknown

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _refuse
    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class _Site:
    """A call of a child: the op ``op`` in the body (``train`` False) or train_body of the Block at ``parent``."""

    parent: str
    train: bool
    op: str


@dataclass(frozen=True)
class _Check:
    """One argument guard on a parameter: ``guard(cond(feed(param)))`` (``feed`` optional)."""

    feed: Op | None
    cond: Op


def trim_calls(model: Model) -> Model:
    """``model`` with non-root forwards trimmed to the parameters they use, and calls trimmed to match
    (see the module docstring). The input model is not changed."""
    graphs = _graph_blocks(model.root)
    if not graphs:
        return model
    tied = _tied(model)
    state = _State(graphs, tied)
    eligible = _eligible(model, set(graphs), tied)
    order = sorted(eligible, key=lambda p: -p.count("."))
    while True:
        changed = state.omit_defaults()
        for path in order:
            for inp in reversed(state.bodies[path][0].inputs):
                changed = state.try_drop(path, inp.name) or changed
        if not changed:
            break
    if not state.edited:
        return model

    def rebuild(path: str, node: Node) -> Node:
        if path in state.edited and isinstance(node, Block):
            body, train = state.bodies[path]
            return replace(node, body=body, train_body=train)
        return node

    return model.with_root(map_tree(model.root, rebuild))


def _graph_blocks(root: Node) -> dict[str, tuple[Graph, Graph | None]]:
    """Blocks whose forward is a Graph (and train forward a Graph with the same inputs, or none)."""
    out: dict[str, tuple[Graph, Graph | None]] = {}
    for path, node in walk(root):
        if isinstance(node, Block) and isinstance(node.body, Graph):
            train = node.train_body
            if train is None or (isinstance(train, Graph) and train.inputs == node.body.inputs):
                out[path] = (node.body, train)
    return out


def _eligible(model: Model, graph_paths: set[str], fenced: set[str]) -> set[str]:
    """Non-root Blocks whose every caller is a Graph this pass can rewrite: every Block above is a graph
    Block (Containers between are fine), nothing reads them as an attribute, and no tie names them."""
    fenced = fenced | set(_attr_reads(model.root))
    nodes = dict(walk(model.root))
    opens = {p for p, n in nodes.items() if p in graph_paths or isinstance(n, Container)}
    out: set[str] = set()
    for path in nodes:
        parts = path.split(".") if path else []
        above = ["", *(".".join(parts[:k]) for k in range(1, len(parts)))] if path else []
        if (path in graph_paths and above and all(p in opens for p in above)
                and not any(path == f or path.startswith(f + ".") for f in fenced)):
            out.add(path)
    return out


def _tied(model: Model) -> set[str]:
    """Paths a tie names, as alias or as owner."""
    return {p for pair in model.ties for p in pair}


def _attr_reads(root: Node) -> list[str]:
    """Absolute paths of everything a graph reads as an attribute (``self.layers``)."""
    out = []
    for path, node in walk(root):
        if isinstance(node, Block):
            for body in (node.body, node.train_body):
                if isinstance(body, Graph):
                    out += [join(path, op.target.path) for op in body.ops if isinstance(op.target, GetAttr)]
    return out


class _State:
    """The forwards being edited (path -> body, train_body) and where each Block is called."""

    def __init__(self, bodies: dict[str, tuple[Graph, Graph | None]], tied: set[str]) -> None:
        self.bodies = dict(bodies)
        self.tied = tied
        self.edited: set[str] = set()
        self.sites: dict[str, list[_Site]] = {}
        for parent, (body, train) in bodies.items():
            for is_train, g in ((False, body), (True, train)):
                for op in g.ops if g is not None else ():
                    if isinstance(op.target, ChildCall):
                        self.sites.setdefault(join(parent, op.target.path), []).append(_Site(parent, is_train, op.name))

    def graph(self, path: str, train: bool) -> Graph:
        g = self.bodies[path][1 if train else 0]
        assert g is not None
        return g

    def op(self, site: _Site) -> Op:
        return next(o for o in self.graph(site.parent, site.train).ops if o.name == site.op)

    def set_op(self, site: _Site, new: Op) -> None:
        g = self.graph(site.parent, site.train)
        ops = tuple(new if o.name == new.name else o for o in g.ops)
        self._set(site.parent, site.train, prune(Graph(g.inputs, ops, g.output)))  # what fed the argument

    def _set(self, path: str, train: bool, g: Graph) -> None:
        body, old_train = self.bodies[path]
        self.bodies[path] = (body, g) if train else (g, old_train)
        self.edited.add(path)

    def omit_defaults(self) -> bool:
        """Leave out call arguments equal to the callee's declared default; True if any was."""
        changed = False
        for callee, sites in self.sites.items():
            if callee not in self.bodies or any(callee == t or callee.startswith(t + ".") for t in self.tied):
                continue
            inputs = self.bodies[callee][0].inputs
            for site in sites:
                op = self.op(site)
                new = _without_defaults(op, inputs)
                if new != op:
                    self.set_op(site, new)
                    changed = True
        return changed

    def try_drop(self, path: str, name: str) -> bool:
        """Drop the parameter ``name`` of the Block at ``path`` when nothing it computes depends on it."""
        body, train = self.bodies[path]
        inp = next(i for i in body.inputs if i.name == name)
        sites = self.sites.get(path, [])
        if inp.kind is InputKind.VAR_POSITIONAL or not sites:
            return False
        if inp.kind in _NAMED and any(i.kind is InputKind.VAR_KEYWORD for i in body.inputs):
            return False  # called directly with it, it would land in the **kwargs kept, unnoticed
        checks = [_guard_checks(g, name) for g in (body, train) if g is not None]
        if any(c is None for c in checks):
            return False
        rewritten = [self._call_without(site, body.inputs, inp, [c for cs in checks if cs for c in cs[1]])
                     for site in sites]
        if any(op is None for op in rewritten):
            return False
        for site, op in zip(sites, rewritten):
            assert op is not None
            self.set_op(site, op)
        for is_train, found in zip((False, True), checks):
            assert found is not None
            g = self.graph(path, is_train)
            inputs = tuple(i for i in g.inputs if i.name != name)
            self._set(path, is_train, Graph(inputs, tuple(o for o in g.ops if o.name not in found[0]), g.output))
        return True

    def _call_without(self, site: _Site, inputs: tuple[Input, ...], inp: Input, checks: list[_Check]) -> Op | None:
        """The call at ``site`` without what it passes for ``inp``; None when that cannot be done faithfully."""
        op = self.op(site)
        bound = _bind(inputs, op)
        if bound is None:
            return None
        where = bound.get(inp.name)
        try:
            value = _passed(inp, where, op, self.graph(site.parent, site.train))
        except _Unknown:
            if checks:
                return None
            value = None
        if not all(_holds(c, value) for c in checks):
            return None
        if isinstance(where, int):  # later positionals are passed by keyword instead: ``layer(h, mask=m)``
            positional = [i.name for i in inputs if i.kind is InputKind.POSITIONAL]
            moved = tuple((positional[k], op.args[k]) for k in range(where + 1, len(op.args)))
            return replace(op, args=op.args[:where], kwargs=moved + op.kwargs)
        if isinstance(where, str):
            return replace(op, kwargs=tuple((k, a) for k, a in op.kwargs if k != where))
        if isinstance(where, tuple):
            return replace(op, kwargs=tuple((k, a) for k, a in op.kwargs if k not in where))
        return op


def _bind(inputs: tuple[Input, ...], op: Op) -> dict[str, int | str | tuple[str, ...]] | None:
    """Input name -> how the call passes it: positional index, keyword, or (for ``**kwargs``) the keywords
    that land in it. None when the call does not bind (too many positionals, unknown keyword, a repeat)."""
    positional = [i.name for i in inputs if i.kind is InputKind.POSITIONAL]
    named = {i.name for i in inputs if i.kind in _NAMED}
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
    if any(i.kind in _NAMED and i.name not in out and i.default is None for i in inputs):
        return None
    return out


def _passed(inp: Input, where: int | str | tuple[str, ...] | None, op: Op, parent: Graph) -> object:
    """What the call passes for ``inp``, as far as the guards may look at it."""
    if isinstance(where, tuple):
        kwargs = dict(op.kwargs)
        return {k: _static(kwargs[k], parent, top=False) for k in where}
    if where is None:
        if inp.default is None:
            raise _Unknown
        return inp.default.value
    arg = op.args[where] if isinstance(where, int) else dict(op.kwargs)[where]
    return _static(arg, parent, top=True)


def _static(arg: Arg, g: Graph, top: bool) -> object:
    """``arg``'s value at the call: a constant, or ``_Hidden`` for a value known not to be None (nested in a
    tuple or dict, any value: a guard can count them but not look at them)."""
    if isinstance(arg, Const):
        return arg.value
    if isinstance(arg, Ref):
        if top and not _never_none(arg.name, g):
            raise _Unknown
        return _Hidden()
    if isinstance(arg, Seq):
        items = [_static(a, g, top=False) for a in arg.items]
        return items if arg.is_list else tuple(items)
    if isinstance(arg, DictArg):
        return {k: _static(a, g, top=False) for k, a in arg.items}
    raise _Unknown


def _never_none(name: str, g: Graph) -> bool:
    """True for a tensor computed by a primitive or by a method of a tensor: never None, whatever the input."""
    types = {i.name: i.type for i in g.inputs} | {o.name: o.type for o in g.ops}
    op = next((o for o in g.ops if o.name == name), None)
    if op is None or not isinstance(op.type, TensorType):
        return False
    if isinstance(op.target, PrimCall):
        return True
    recv = op.args[0] if op.args else None
    return isinstance(op.target, MethodCall) and isinstance(recv, Ref) and isinstance(types.get(recv.name), TensorType)


def _guard_checks(g: Graph, name: str) -> tuple[set[str], list[_Check]] | None:
    """When ``g`` reads ``name`` only in argument guards: the ops to remove with it and the checks they make."""
    users = g.users()
    ops = {o.name: o for o in g.ops}
    remove: set[str] = set()
    checks: list[_Check] = []
    for user in dict.fromkeys(users[name]):
        op = ops.get(user)
        if op is not None and _is_cond(op, name, users, ops):
            checks.append(_Check(None, op))
            remove |= {op.name, *users[op.name]}
            continue
        if op is None or not _is_feed(op, name) or not users[op.name]:
            return None
        remove.add(op.name)
        for cond_name in dict.fromkeys(users[op.name]):
            cond = ops.get(cond_name)
            if cond is None or not _is_cond(cond, op.name, users, ops):
                return None
            checks.append(_Check(op, cond))
            remove |= {cond.name, *users[cond.name]}
    return remove, checks


def _is_feed(op: Op, name: str) -> bool:
    """``len(x)``-like: a pure function of ``name`` alone."""
    return isinstance(op.target, FunctionCall) and is_pure(op) and not op.kwargs and op.args == (Ref(name),)


def _is_cond(op: Op, name: str, users: dict[str, list[str]], ops: dict[str, Op]) -> bool:
    """A pure comparison of ``name`` with a constant whose result only argument guards read."""
    refs = [a for a in op.args if isinstance(a, Ref)]
    if not (isinstance(op.target, FunctionCall) and is_pure(op) and not op.kwargs and len(op.args) == 2
            and refs == [Ref(name)] and all(isinstance(a, (Ref, Const)) for a in op.args) and users[op.name]):
        return False
    guards = [ops.get(u) for u in users[op.name]]
    return all(g is not None and isinstance(g.target, Guard) and g.target.kind == "argument"
               and g.args == (Ref(op.name),) and not users[g.name] for g in guards)


def _holds(check: _Check, value: object) -> bool:
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


def _without_defaults(op: Op, inputs: tuple[Input, ...]) -> Op:
    """The call without keyword arguments equal to the callee's default, nor trailing positional ones."""
    defaults = {i.name: i.default for i in inputs if i.kind in _NAMED and i.default is not None}
    kwargs = tuple((k, a) for k, a in op.kwargs if not (isinstance(a, Const) and defaults.get(k) == a))
    positional = [i.name for i in inputs if i.kind is InputKind.POSITIONAL]
    args = list(op.args)
    while args and len(args) <= len(positional) and isinstance(args[-1], Const) \
            and defaults.get(positional[len(args) - 1]) == args[-1]:
        args.pop()
    return replace(op, args=tuple(args), kwargs=kwargs)


__all__ = ["trim_calls"]

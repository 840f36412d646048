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
  trailing);
- an argument guard of a non-root Block whose parameter is still used goes when every call passes
  a value it accepts: a tensor the parent computed, a tuple literal of the counted length, or the
  parent's own parameter that the parent's guards already check (BERT's ``attention_mask is None``
  was refused four times over, once per level; the outermost check now does it once).

Repeated bottom-up to a fixpoint: once a child drops a parameter, its parent may no longer read
the value it forwarded (Llama's ``position_ids``, passed only into the attention's ``**kwargs``).

Why this is faithful. The root keeps its full signature and all its guards, so the emitted model
still refuses every call it cannot reproduce. A child is called only by its emitted parents, and
a parameter is dropped only when every call of the child is a ``ChildCall`` in a parent's Graph
that this pass rewrites; each guard removed is checked to hold for what every call passes (the
captured constant, a tensor a method produced, or the keywords a ``**kwargs`` receives), so it
could never fire there (a parent's guard that pins a child's is itself removed only when its own
callers make it unable to fire, so the chain ends at a guard that stays). A user who calls a child
directly with a dropped argument gets Python's TypeError: loud; an inner class called directly, without
its parent, no longer checks what its parent checked (the emitted model, what users call, still refuses
every such call). A structural body (combinators over children) is read as its lowering. Left alone:
the root; a Block reached from a body that is not a Graph (copied source, ``nn.Sequential``), read as an attribute
(``self.layers`` handed to a helper), or tied to another path; size and dtype guards, which are
not argument guards; ``*args``. Forward hooks are not in the IR: capture refuses models with
them (``frontends/hooks.py``), so no hook can observe the arguments removed here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torchgraft.backends.torch.call_values import (
    NAMED,
    Check,
    Unknown,
    argument_guards,
    bind,
    guard_checks,
    holds,
    passed,
    without_defaults,
)
from torchgraft.backends.torch.forward import prune
from torchgraft.ir.graph import ChildCall, GetAttr, Graph, Input, InputKind, Op
from torchgraft.ir.lower import block_graph, is_structural
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Container, Node
from torchgraft.ir.traverse import join, map_tree, walk


@dataclass(frozen=True)
class _Site:
    """A call of a child: the op ``op`` in the body (``train`` False) or train_body of the Block at ``parent``."""

    parent: str
    train: bool
    op: str



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
            changed = state.drop_held_guards(path) or changed
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
    """Blocks whose forward is a Graph (and train forward a Graph with the same inputs, or none); a structural
    body (``ir.stored``) as its lowering, so the children it calls are trimmed too."""
    out: dict[str, tuple[Graph, Graph | None]] = {}
    for path, node in walk(root):
        if isinstance(node, Block) and is_structural(node.body) and node.train_body is None:
            out[path] = (block_graph(node), None)
        elif isinstance(node, Block) and isinstance(node.body, Graph):
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
                new = without_defaults(op, inputs)
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
        if inp.kind in NAMED and any(i.kind is InputKind.VAR_KEYWORD for i in body.inputs):
            return False  # called directly with it, it would land in the **kwargs kept, unnoticed
        checks = [guard_checks(g, name) for g in (body, train) if g is not None]
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

    def drop_held_guards(self, path: str) -> bool:
        """Remove the argument guards of the Block at ``path`` that hold for what every call passes (the parent
        already checked the value, or computed it); True if any was. Runs deepest Blocks first, so a parent's
        guard still stands when its children are looked at, and what it pinned stays true once it goes."""
        body, train = self.bodies[path]
        sites = self.sites.get(path, [])
        changed = False
        for inp in body.inputs if sites else ():
            if inp.kind in (InputKind.VAR_POSITIONAL, InputKind.VAR_KEYWORD):
                continue
            found = [argument_guards(g, inp.name) for g in self.bodies[path] if g is not None]
            checks = [c for _, cs in found for c in cs]
            if not checks or not all(self._holds_at(site, body.inputs, inp, checks) for site in sites):
                continue
            for is_train, (remove, _) in zip((False, True), found):
                g = self.graph(path, is_train)
                self._set(path, is_train, prune(Graph(g.inputs, tuple(o for o in g.ops if o.name not in remove),
                                                      g.output)))
            changed = True
        return changed

    def _holds_at(self, site: _Site, inputs: tuple[Input, ...], inp: Input, checks: list[Check]) -> bool:
        """Whether every check passes for what the call at ``site`` passes for ``inp`` (any doubt: False)."""
        op = self.op(site)
        bound = bind(inputs, op)
        if bound is None:
            return False
        try:
            value = passed(inp, bound.get(inp.name), op, self.graph(site.parent, site.train))
        except Unknown:
            return False
        return all(holds(c, value) for c in checks)

    def _call_without(self, site: _Site, inputs: tuple[Input, ...], inp: Input, checks: list[Check]) -> Op | None:
        """The call at ``site`` without what it passes for ``inp``; None when that cannot be done faithfully."""
        op = self.op(site)
        bound = bind(inputs, op)
        if bound is None:
            return None
        where = bound.get(inp.name)
        try:
            value = passed(inp, where, op, self.graph(site.parent, site.train))
        except Unknown:
            if checks:
                return None
            value = None
        if not all(holds(c, value) for c in checks):
            return None
        if isinstance(where, int):  # later positionals are passed by keyword instead: ``layer(h, mask=m)``
            positional = [i.name for i in inputs if i.kind is InputKind.POSITIONAL]
            if len(op.args) > len(positional):
                return None  # the extra ones land in ``*args``: they have no keyword to move to
            moved = tuple((positional[k], op.args[k]) for k in range(where + 1, len(op.args)))
            return replace(op, args=op.args[:where], kwargs=moved + op.kwargs)
        if isinstance(where, str):
            return replace(op, kwargs=tuple((k, a) for k, a in op.kwargs if k != where))
        if isinstance(where, tuple):
            return replace(op, kwargs=tuple((k, a) for k, a in op.kwargs if k not in where))
        return op



__all__ = ["trim_calls"]

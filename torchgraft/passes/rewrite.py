"""Rewrite helpers shared by passes: fmap over primitives, module-level and inside graphs.

``fmap(model, fn)`` visits every primitive — a layer in the module tree (``stem.2``) or a
functional call inside a block's graph (``blocks.0.relu_1``) — and replaces it with what
``fn(site)`` returns (None keeps it). Edits return a new Model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torchgraft.ir.graph import Graph, PrimCall
from torchgraft.ir.lower import is_structural, leaf_sites, map_leaves
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ChildRef, Node, module_children
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join, with_bodies, with_children
from torchgraft.passes.selectors import Site, enclosing_label

Rewriter = Callable[[Site, str], "Node | None"]
"""``fn(site, spelling)``: the replacement, or None to keep the node. ``spelling`` is
``"module"`` for layers and the op's spelling (``functional``, ``method``...) inside graphs."""


def _leaf_names(g: Node, seen: dict[Node, list[str]]) -> list[str] | None:
    """``leaf_sites``'s names of ``g``, lowered once per distinct body (``seen``: equal bodies, equal names; an
    unhashable body is lowered by ``map_leaves``): a model of many equal blocks is lowered once."""
    try:
        names = seen.get(g)
        if names is None:
            names = seen[g] = [n for n, _ in leaf_sites(g)]
        return names
    except TypeError:
        return None


def _structure(g: Node, path: str, enclosing: tuple[str, ...], fn: Rewriter, block: Block,
               seen: dict[Node, list[str]] | None = None) -> Node:
    """A structural body's inline primitives (``F.relu`` stored as ``Activation`` in a Chain), each visited as a site
    named like its lowered value (``layer1.0.relu_1``)."""
    def leaf(name: str, node: Node) -> Node:
        if not isinstance(node, Primitive):
            return node
        spelling = getattr(node, "spelling", None)
        how = spelling.value if spelling else "functional"
        new = fn(Site(join(path, name), node, enclosing, block, how), how)
        if new is None or new == node:
            return node
        if not isinstance(new, Primitive) or new.state():
            raise TypeError(f"{join(path, name)}: an inline call can only become another stateless primitive")
        return new
    return map_leaves(g, leaf, None if seen is None else _leaf_names(g, seen))


def _graph(g: Node | None, path: str, enclosing: tuple[str, ...], fn: Rewriter, block: Block,
           seen: dict[Node, list[str]] | None = None) -> Node | None:
    if g is not None and is_structural(g):
        return _structure(g, path, enclosing, fn, block, seen)
    if not isinstance(g, Graph):
        return g
    ops = []
    changed = False
    for op in g.ops:
        if isinstance(op.target, PrimCall):
            prim = op.target.prim
            spelling = getattr(prim, "spelling", None)
            how = spelling.value if spelling else "functional"
            new = fn(Site(join(path, op.name), prim, enclosing, block, how), how)
            if new is not None and new != prim:
                if not isinstance(new, Primitive):
                    raise TypeError(f"{join(path, op.name)}: a functional call can only become another primitive")
                op = replace(op, target=PrimCall(new))
                changed = True
        ops.append(op)
    return Graph(g.inputs, tuple(ops), g.output) if changed else g


def fmap(model: Model, fn: Rewriter) -> Model:
    """Apply ``fn`` to every primitive site; returns a new Model (the same one if nothing changed)."""
    seen: dict[Node, list[str]] = {}  # leaf names of each distinct structural body
    root = _visit(model.root, "", (), None, fn, seen)
    return model if root is model.root else model.with_root(root)


def _visit(node: Node, path: str, enclosing: tuple[str, ...], parent: Node | None, fn: Rewriter,
           seen: dict[Node, list[str]]) -> Node:
    """``fmap``'s walk (module-level: a closure that calls itself is a reference cycle, freed only by the
    cyclic collector, which then scans all it holds)."""
    if isinstance(node, Primitive):
        new = fn(Site(path, node, enclosing, parent), "module")
        return node if new is None else new
    inner = enclosing + enclosing_label(node)
    kids = module_children(node)
    new_kids = tuple((n, _visit(c, join(path, n), inner, node, fn, seen)) for n, c in kids)
    if any(a is not b for (_, a), (_, b) in zip(kids, new_kids)):
        node = with_children(node, new_kids)
    if isinstance(node, Block):
        body = _graph(node.body, path, inner, fn, node, seen)
        train = _graph(node.train_body, path, inner, fn, node, seen)
        if body is not node.body or train is not node.train_body:
            node = with_bodies(node, body, train)  # type: ignore[arg-type]
    return node


def count_params(model: Model) -> int:
    """Number of parameter elements in the model's weights (buffers excluded when known)."""
    import math

    from torchgraft.ir.traverse import walk

    buffers = set()
    for path, node in walk(model.root):
        if isinstance(node, Primitive):
            buffers |= {join(path, n) for n, _, is_param in node.state() if not is_param}
        elif isinstance(node, Block):
            buffers |= {join(path, s.name) for s in node.state if not s.parameter}
    tied = {alias for alias, _ in model.ties}
    return sum(math.prod(v.shape) for k, v in model.weights.items()
               if k not in buffers and not any(k == a or k.startswith(a + ".") for a in tied))


def rename_children(block: Block, renames: dict[str, str]) -> Block:
    """``block`` with direct children renamed (``old -> new``) and every call/attr path updated.

    Only for children without state: their state_dict keys do not change.
    """
    if not renames:
        return block
    from torchgraft.ir.graph import ChildCall, GetAttr

    def fix(path: str) -> str:
        head, _, rest = path.partition(".")
        return renames.get(head, head) + ("." + rest if rest else "")

    def graph(g: Node | None) -> Node | None:
        if g is not None and is_structural(g):
            return map_leaves(g, lambda _, n: ChildRef(fix(n.path)) if isinstance(n, ChildRef) else n)
        if not isinstance(g, Graph):
            return g
        ops = []
        for op in g.ops:
            t = op.target
            if isinstance(t, ChildCall):
                op = replace(op, target=ChildCall(fix(t.path)))
            elif isinstance(t, GetAttr):
                op = replace(op, target=GetAttr(fix(t.path)))
            ops.append(op)
        return Graph(g.inputs, tuple(ops), g.output)

    children = tuple((renames.get(n, n), c) for n, c in block.children)
    return replace(block, children=children, body=graph(block.body), train_body=graph(block.train_body))  # type: ignore[arg-type]


def enclosing_map(root: Node) -> dict[str, tuple[str, ...]]:
    """Path → classes of the Blocks enclosing it (``Sequential`` for Chains; outermost first), for ``in:``.

    A graph op inside a Block at ``p`` is addressed ``p.<op>`` and is enclosed by that Block too.
    """
    out: dict[str, tuple[str, ...]] = {}

    def visit(node: Node, path: str, enclosing: tuple[str, ...]) -> None:
        out[path] = enclosing
        inner = enclosing + enclosing_label(node)
        if isinstance(node, Block):
            for g in (node.body, node.train_body):
                if isinstance(g, Graph):
                    out.update({join(path, op.name): inner for op in g.ops})
                elif g is not None and is_structural(g):
                    out.update({join(path, n): inner for n, leaf in leaf_sites(g) if isinstance(leaf, Primitive)})
        for name, child in module_children(node):
            visit(child, join(path, name), inner)

    visit(root, "", ())
    return out

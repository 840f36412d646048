"""Every place a selector can address, and a selection as a value you can preview and count.

    >>> sel = select(model, "kind:Conv2d")          # doctest: +SKIP
    >>> len(sel), sel.paths[:2]                     # doctest: +SKIP
    (20, ('conv1', 'layer1.0.conv1'))
    >>> print(sel)                                  # doctest: +SKIP
    kind:Conv2d selects 20 site(s):
      conv1  Conv2d(3, 64, 7, ...)

A site is a module-level node (``layer1.0.conv1``, a Block, a Chain) or a functional
primitive inside a Block's forward (``layer1.0.relu_1`` for an ``F.relu`` call).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torchgraft.ir.graph import Graph, PrimCall
from torchgraft.ir.lower import is_structural, leaf_sites
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Node, module_children
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join
from torchgraft.passes.selectors import SelectorLike, Site, enclosing_label, parse_selector


def _spelling(prim: object) -> str:
    spelling = getattr(prim, "spelling", None)
    return spelling.value if spelling is not None else "functional"


def _visit(node: Node, path: str, parent: Node | None, enclosing: tuple[str, ...], graphs: bool) -> Iterator[Site]:
    yield Site(path, node, enclosing, parent, "module")
    inner = enclosing + enclosing_label(node)
    if graphs and isinstance(node, Block):
        seen: set[str] = set()
        for g in (node.body, node.train_body):
            if isinstance(g, Graph):
                for op in g.ops:
                    if isinstance(op.target, PrimCall) and op.name not in seen:
                        seen.add(op.name)
                        yield Site(join(path, op.name), op.target.prim, inner, node, _spelling(op.target.prim))
            elif g is not None and is_structural(g):  # inline primitives of a structural body, named as lowered
                for name, leaf in leaf_sites(g):
                    if isinstance(leaf, Primitive) and name not in seen:
                        seen.add(name)
                        yield Site(join(path, name), leaf, inner, node, _spelling(leaf))
    for name, child in module_children(node):
        yield from _visit(child, join(path, name), node, inner, graphs)


def iter_sites(model: Model | Node, graphs: bool = True) -> Iterator[Site]:
    """Every site, parents before children: module-level nodes, then the functional primitives in their
    forwards (left out with ``graphs=False``)."""
    root = model.root if isinstance(model, Model) else model
    yield from _visit(root, "", None, (), graphs)


@dataclass(frozen=True)
class Selection:
    """The sites a selector picks in one model: count it (``len``), list it (``paths``), print a preview."""

    selector: str
    sites: tuple[Site, ...]

    def __len__(self) -> int:
        return len(self.sites)

    def __bool__(self) -> bool:
        return bool(self.sites)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    @property
    def paths(self) -> tuple[str, ...]:
        """The dotted paths of the selected sites, in tree order."""
        return tuple(s.path or "<root>" for s in self.sites)

    def __str__(self) -> str:
        head = f"{self.selector} selects {len(self.sites)} site(s)"
        rows = [f"  {s.path or '<root>'}  {_label(s.node)}" for s in self.sites[:20]]
        more = [f"  ... {len(self.sites) - 20} more"] if len(self.sites) > 20 else []
        return "\n".join([head + (":" if rows else ""), *rows, *more])


def _label(node: Node) -> str:
    label = getattr(node, "label", None)
    if callable(label):
        return str(label())
    if isinstance(node, Block):
        return node.cls.name
    return type(node).__name__


def select(model: Model | Node, where: SelectorLike) -> Selection:
    """The sites ``where`` (a selector, its text form, or a predicate over a Site) picks in ``model``."""
    sel = parse_selector(where)
    return Selection(str(sel), tuple(s for s in iter_sites(model) if sel(s)))

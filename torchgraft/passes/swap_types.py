"""When swapping one activation for another provably keeps every type (used by ``swap-activation``).

Every activation swap-activation knows (``ActKind``) is elementwise: on a floating-point tensor it returns a
tensor of the same shape and dtype. So a swap whose every site's input is recorded as floating point keeps
every type in the model, and ``passes.run`` carries the types over instead of re-inferring them (the slow
part of a pass on a large model). A site is proven only from types recorded at exactly that call:

- a functional call in a Graph body (``F.relu(x)``): the op's recorded output type;
- an inline call in a block's Chain body (``Chain(ChildRef("linear"), relu)``): the output type of the
  child called just before it;
- an activation module (``self.relu``): its recorded output type, the module called once; or each call's
  recorded type, all calls being in its parent's forward.

Modules below a forward that is not IR (copied source, an opaque module), or read as an attribute (passed on),
count as called more than once: their recorded types may describe only one of their calls.

The old activation's output type says its input's: every kind but ``sigmoid`` and ``tanh`` keeps an
integer dtype or refuses it, so a floating output means a floating input. Anything else (no recorded
type, an integer or complex tensor, a module or block called more than once, a training-mode body, ties,
an in-place call whose new kind has no in-place form, a layer taking the activation as an argument)
leaves the site unproven, and the full re-inference runs.

>>> SiteTypes(model).keeps(site)   # doctest: +SKIP
True
"""

from __future__ import annotations

from torchgraft.ir.activations import ActKind
from torchgraft.ir.graph import ChildCall, GetAttr, Graph, Op
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, ChildRef, Node, Parallel, SkipConnection, module_children
from torchgraft.ir.primitives import Activation, Primitive, torch_defaults
from torchgraft.ir.traverse import join
from torchgraft.ir.types import TensorType
from torchgraft.passes.selectors import Site

FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})
"""Dtypes every ``ActKind`` maps to the same dtype and shape."""

PROMOTING = (ActKind.SIGMOID, ActKind.TANH)
"""Kinds that turn an integer tensor into a floating one: their floating output says nothing of the input."""


def _floating(t: object) -> bool:
    return isinstance(t, TensorType) and t.dtype in FLOATING


def _refs(body: Node, path: str, counts: dict[str, int]) -> None:
    """Count the children a structural body calls (``ChildRef`` paths, absolute) into ``counts``."""
    if isinstance(body, ChildRef):
        at = join(path, body.path)
        counts[at] = counts.get(at, 0) + 1
    elif isinstance(body, (Chain, Parallel, SkipConnection)):
        for _, item in body.named():
            _refs(item, path, counts)


def _calls(root: Node) -> dict[str, int]:
    """How many times each module is called in one forward (read as an attribute counts twice: passed on, it
    may be called anywhere), by path, counted over every Block's bodies."""
    counts: dict[str, int] = {}
    stack: list[tuple[str, Node]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Primitive):
            continue
        if isinstance(node, Block):
            for body in (node.body, node.train_body):
                if isinstance(body, Graph):
                    for op in body.ops:
                        t = op.target
                        if isinstance(t, (ChildCall, GetAttr)):
                            at = join(path, t.path)
                            counts[at] = counts.get(at, 0) + (1 if isinstance(t, ChildCall) else 2)
                elif isinstance(body, (Chain, Parallel, SkipConnection, ChildRef, Primitive)):
                    _refs(body, path, counts)
                elif body is not None:  # copied source (PySource), opaque: may call its children any number of times
                    counts[path] = counts.get(path, 0) + 2
        stack.extend((join(path, n), c) for n, c in module_children(node))
    return counts


def _is_child(parent: Node | None, site: Site) -> bool:
    """Whether ``site`` is a module of its own (a child of ``parent``), not a call inside a Block's forward."""
    if not isinstance(parent, Block):
        return parent is not None
    name = site.path.rpartition(".")[2]
    return any(n == name and c is site.node for n, c in parent.children)


class SiteTypes:
    """Proves, site by site, that swapping the activation there for ``to`` keeps every type (see the module
    docstring). Built once per rewrite; the model-wide facts are computed on first use."""

    def __init__(self, model: Model, to: ActKind) -> None:
        self.model = model
        self.to_inplace = "inplace" in torch_defaults(to.module)
        self.types: dict[str, object] = dict(model.types)
        self._multi: set[str] | None = None
        self._counts: dict[str, int] = {}
        self._ops: dict[int, dict[str, Op]] = {}
        self._uses_of: dict[int, dict[int | str, list[object]]] = {}

    def _called_once(self, path: str) -> bool:
        """Whether no module on ``path`` (itself or above) is called, or read, more than once."""
        if self._multi is None:
            self._counts = _calls(self.model.root)
            self._multi = {p for p, k in self._counts.items() if k > 1}
        if not self._multi:
            return True
        if "" in self._multi:  # the root's forward is not IR: nothing below it is known to be called once
            return False
        if not path:
            return True
        parts = path.split(".")
        return not any(".".join(parts[:i]) in self._multi for i in range(1, len(parts) + 1))

    def keeps(self, site: Site) -> bool:
        """Whether the activation at ``site`` can become any other kind with every type kept."""
        node = site.node
        if self.model.ties or not isinstance(node, Activation) or node.kind in PROMOTING:
            return False
        if node.inplace and not self.to_inplace:
            return False  # written back with copy_ (swap-activation): new ops, retyped
        block = site.parent
        if site.spelling == "module" and _is_child(block, site):
            return self._module_keeps(block, site.path)
        if not isinstance(block, Block) or block.train_body is not None:
            return False
        bpath, _, name = site.path.rpartition(".")
        if bpath and not self._called_once(bpath):
            return False
        if isinstance(block.body, Graph):
            op = self._graph_ops(block.body).get(name)
            return op is not None and getattr(op.target, "prim", None) is node and _floating(op.type)
        inputs = self._uses(block, bpath).get(id(node), [])
        return bool(inputs) and all(_floating(t) for t in inputs)

    def _module_keeps(self, parent: Node | None, path: str) -> bool:
        """An activation module: its one call's recorded type, or each call's in its parent's Graph (a
        module called twice there, ``self.relu`` in a ResNet block, is proven by both ops' types)."""
        ppath, _, name = path.rpartition(".")
        if not self._called_once(ppath):
            return False
        if not isinstance(parent, Block) or parent.train_body is not None:
            return self._called_once(path) and _floating(self.types.get(path))
        calls: list[object]
        if isinstance(parent.body, Graph):
            calls = [op.type for op in parent.body.ops if isinstance(op.target, ChildCall) and op.target.path == name]
        else:
            calls = self._uses(parent, ppath).get(name, [])
        return bool(calls) and self._counts.get(path) == len(calls) and all(_floating(t) for t in calls)

    def _graph_ops(self, g: Graph) -> dict[str, Op]:
        found = self._ops.get(id(g))
        if found is None:
            found = self._ops[id(g)] = {op.name: op for op in g.ops}
        return found

    def _uses(self, block: Block, bpath: str) -> dict[int | str, list[object]]:
        """The recorded types of the inputs of each activation ``block``'s structural body calls: inline ones by
        id, children by name. A value's type is known after a child called once (its recorded output) and through
        elementwise activations; the last activation of the body gets the block's output type (``types_in``)."""
        found = self._uses_of.get(id(block))
        if found is not None:
            return found
        found = self._uses_of[id(block)] = {}
        self._called_once("")  # the call counts
        kids = dict(block.children)
        last: list[tuple[int | str, int]] = []
        body = block.body
        if isinstance(body, Chain) and self._flat(body, bpath, kids, found, last):  # the common case
            return self._ends(bpath, found, last)

        def visit(node: Node, current: object) -> object:
            if isinstance(node, Chain):
                for item in node.items:
                    current = visit(item, current)
                return current
            if isinstance(node, (SkipConnection, Parallel)):
                for _, part in node.named():
                    visit(part, current)
                last.clear()  # their output is a combination, not the last activation's
                return None
            act: Node | None = kids.get(node.path) if isinstance(node, ChildRef) else node
            key: int | str = node.path if isinstance(node, ChildRef) else id(node)
            if isinstance(act, Activation):
                found.setdefault(key, []).append(current)
                last[:] = [(key, len(found[key]) - 1)]
                return None if act.kind in PROMOTING else current
            last.clear()
            if isinstance(node, ChildRef):
                at = join(bpath, node.path)
                return self.types.get(at) if self._counts.get(at) == 1 else None
            return None

        visit(body, None)
        return self._ends(bpath, found, last)

    def _flat(self, body: Chain, bpath: str, kids: dict[str, Node], found: dict[int | str, list[object]],
              last: list[tuple[int | str, int]]) -> bool:
        """``_uses`` for a Chain of children and inline activations only, without a call per item; False (and
        nothing recorded) for any other Chain."""
        current: object = None
        types, counts = self.types, self._counts
        for item in body.items:
            if type(item) is not ChildRef and not isinstance(item, Activation):
                found.clear()
                last.clear()
                return False
            if type(item) is ChildRef:
                act = kids.get(item.path)
                if not isinstance(act, Activation):
                    at = f"{bpath}.{item.path}" if bpath else item.path
                    current = types.get(at) if counts.get(at) == 1 else None
                    last.clear()
                    continue
                key: int | str = item.path
            else:
                act, key = item, id(item)
            assert isinstance(act, Activation)
            seen = found.get(key)
            if seen is None:
                seen = found[key] = []
            seen.append(current)
            last[:] = [(key, len(seen) - 1)]
            if act.kind in PROMOTING:
                current = None
        return True

    def _ends(self, bpath: str, found: dict[int | str, list[object]],
              last: list[tuple[int | str, int]]) -> dict[int | str, list[object]]:
        """``found`` with the body's last activation given the block's output type (when its input's is unknown):
        elementwise, its output is floating only if its input was."""
        out = self.types.get(bpath) if bpath else self.model.output_type
        if last and _floating(out) and self._called_once(bpath):
            key, i = last[0]
            found[key][i] = found[key][i] or out
        return found

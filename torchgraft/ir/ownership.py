"""State moves with its nodes: re-keying a Model's path-keyed fields by following nodes through an edit.

A Model keeps its tensors in flat dicts keyed by dotted path (``weights``, ``constants``,
``extra_state``, ``frozen``; ``types`` and ``ties`` too). Each key belongs to the deepest
module-level node whose path prefixes it: ``layer1.0.conv1.weight`` to the Conv at
``layer1.0.conv1``, a Block's own ``pos_embedding`` to the Block, ``enc.sub.w`` to an Opaque at
``enc``. Passes edit trees by building new ones that reuse the nodes they leave alone (``map_tree``,
``fmap``, ``with_children`` keep untouched subtrees as the same objects), so where a node went is
found by identity, and its keys go with it. One walk of the module tree covers both of a Block's
forwards: ``body`` and ``train_body`` call children by ``ChildRef``, so neither owns state itself.

>>> conv, relu = ir.Conv2d(3, 8, 3), ir.ReLU()                      # doctest: +SKIP
>>> follow(Chain(ir.Identity(), conv, relu), Chain(conv, relu))    # doctest: +SKIP
{'': '', '1': '0', '2': '1'}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, Node, Opaque, module_children
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join, walk

_KEYED = ("weights", "constants", "extra_state")


def owners(root: Node) -> list[tuple[str, Node]]:
    """The module-level nodes that own state directly, with their paths, parents first: layers with
    parameters or buffers, Blocks with their own state, constants or extra state, Opaque modules with state.

    >>> owners(Chain(ir.Conv2d(3, 8, 3), ir.ReLU()))   # doctest: +SKIP
    [('0', Conv(...))]
    """
    def owns(node: Node) -> bool:
        if isinstance(node, Primitive):
            return bool(node.state())
        if isinstance(node, Block):
            return bool(node.state or node.constants or node.extra_state is not None)
        return isinstance(node, Opaque) and bool(node.state)
    return [(p, n) for p, n in walk(root) if owns(n)]


def _kind(node: Node) -> object:
    """What a rebuilt node must still be to count as the same node: its type (and class, for a Block)."""
    return (type(node), node.cls) if isinstance(node, (Block, Opaque)) else type(node)


def _parent(path: str) -> str | None:
    return None if not path else path.rpartition(".")[0]


def _by_identity(old: list[tuple[str, Node]], new: list[tuple[str, Node]]) -> dict[str, str]:
    """Pairs of paths holding the same object; an object at several paths pairs its occurrences in walk
    order (an edit drops or shifts occurrences, it does not reorder them)."""
    spots: dict[int, list[str]] = {}
    for q, n in new:
        spots.setdefault(id(n), []).append(q)
    out = {}
    for p, n in old:
        free = spots.get(id(n))
        if free:
            out[p] = free.pop(0)
    return out


def follow(before: Node, after: Node) -> dict[str, str]:
    """Old path -> new path of every module-level node of ``before`` that is still in ``after``.

    Nodes are matched by identity (an object at several paths pairs its occurrences in walk order).
    A node the edit rebuilt (a Chain that lost an item, a Block whose child was wrapped) is matched,
    parents first: an item of a Chain to the next free item of its kind in the new Chain, in order and
    never past an item matched by identity (so removing an Identity shifts the rebuilt items after it);
    anything else to the same kind of node where most of its matched children now sit, or else under
    its own name where its parent went (the root: at the root). A node matched to nothing was removed.

    >>> follow(Chain(lin), Chain(lora_block(lin, r=2, alpha=4.0)))   # a LoRA-style wrap   # doctest: +SKIP
    {'': '', '0': '0.base'}
    """
    old, new = list(walk(before)), list(walk(after))
    out = _by_identity(old, new)
    new_at = dict(new)
    taken = set(out.values())
    old_at = dict(old)
    for p, n in old:
        if p in out:
            continue
        q = _chain_item_at(p, n, old_at, out, new_at, taken)
        q = q if q is not None else _rebuilt_at(p, n, out, new_at, taken)
        if q is not None:
            out[p] = q
            taken.add(q)
    return out


def _chain_item_at(path: str, node: Node, old_at: dict[str, Node], out: dict[str, str], new_at: dict[str, Node],
                   taken: set[str]) -> str | None:
    """For a rebuilt item of a Chain whose Chain went to a Chain: the first free new item of its kind after
    the new place of the item before it, stopping at the next item matched by identity; else None."""
    up = _parent(path)
    parent, moved = (old_at.get(up), out.get(up)) if up is not None else (None, None)
    target = new_at.get(moved) if moved is not None else None
    if not isinstance(parent, Chain) or not isinstance(target, Chain) or moved is None or up is None:
        return None
    names = [name for name, _ in parent.named()]
    index = names.index(path.rpartition(".")[2])
    start = 0
    for name in reversed(names[:index]):  # after the new place of the nearest earlier item that has one
        earlier = out.get(join(up, name))
        if earlier is not None and _parent(earlier) == moved:
            start = [m for m, _ in target.named()].index(earlier.rpartition(".")[2]) + 1
            break
    anchors = {out[join(up, name)] for name in names if join(up, name) in out}
    for name, item in list(target.named())[start:]:
        q = join(moved, name)
        if q in anchors and q not in taken:
            return None
        if q not in taken and _kind(item) == _kind(node):
            return q
        if q in anchors:
            return None
    return None


def _rebuilt_at(path: str, node: Node, out: dict[str, str], new_at: dict[str, Node], taken: set[str]) -> str | None:
    """Where the rebuilt ``node`` went: the free node of its kind most of its matched children sit under, else
    the free node of its kind under its own name where its parent went; None when removed."""
    def fits(q: str | None) -> bool:
        return q is not None and q not in taken and q in new_at and _kind(new_at[q]) == _kind(node)

    kids = (join(path, name) for name, _ in module_children(node))
    votes = Counter(_parent(out[c]) for c in kids if c in out)
    found = next((q for q, _ in votes.most_common() if fits(q)), None)
    if found is not None:
        return found
    up = _parent(path)
    at = path if up is None else join(out[up], path.rpartition(".")[2]) if up in out else None
    return at if fits(at) else None


class _Route:
    """Old key -> new key (None when its owner was removed), from the owners' moves."""

    def __init__(self, before: Node, after: Node) -> None:
        self.paths = {p for p, _ in walk(before)}
        self.moves = follow(before, after)

    def __call__(self, key: str) -> str | None:
        parts = key.split(".") if key else []
        for i in range(len(parts), -1, -1):
            owner = ".".join(parts[:i])
            if owner in self.paths:
                new = self.moves.get(owner)
                if new is None or i == len(parts):
                    return new
                return join(new, ".".join(parts[i:]))
        return None

    def keys(self, d: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            new = self(k)
            if new is not None:
                out[new] = v
        return out

    def pairs(self, pairs: Iterable[tuple[str, Any]], both: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            new, to = self(k), (self(v) if both else v)
            if new is not None and to is not None:
                out[new] = to
        return out


def moved(model: Model, root: Node, **changes: Any) -> Model:
    """``model`` with ``root``, every path-keyed field re-keyed by following the nodes (see ``follow``).

    Keys of removed owners are dropped. ``weights``, ``constants``, ``extra_state``, ``types`` and
    ``ties`` given in ``changes`` (a mapping, or pairs for types/ties) are added on top and win;
    ``frozen`` given is added to the re-keyed flags; any other change is passed to ``with_root``.

    >>> moved(model, new_root, weights={"fc.lora_B.weight": zeros})   # doctest: +SKIP
    """
    route = _Route(model.root, root)
    fields: dict[str, Any] = {}
    for name in _KEYED:
        fields[name] = {**route.keys(getattr(model, name)), **dict(changes.pop(name, {}))}
    types = {**route.pairs(model.types, both=False), **dict(changes.pop("types", ()))}
    ties = {**route.pairs(model.ties, both=True), **dict(changes.pop("ties", ()))}
    frozen = [k for k in (route(f) for f in model.frozen) if k is not None]
    return model.with_root(root, types=tuple(types.items()), ties=tuple(ties.items()),
                           frozen=tuple(frozen) + tuple(changes.pop("frozen", ())), **fields, **changes)


def derived_key_map(before: Model, after: Model) -> dict[str, str]:
    """Old state_dict key -> new key for each key of ``before`` whose owner moved and that ``after`` holds.

    >>> derived_key_map(model, LoRA(where="fc").apply(model))   # doctest: +SKIP
    {'fc.weight': 'fc.base.weight', 'fc.bias': 'fc.base.bias'}
    """
    route = _Route(before.root, after.root)
    out = {}
    for key in before.weights:
        new = route(key)
        if new is not None and new != key and new in after.weights:
            out[key] = new
    return out

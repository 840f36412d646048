"""Named children of structural nodes: naming rules, ``node[name]``, ``named()``, ``contains(kind)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchgraft.errors import IRError

if TYPE_CHECKING:
    from torchgraft.ir.nodes import Node


def default_names(n: int) -> tuple[str, ...]:
    """The names of ``n`` positional items: ``("0", "1", ...)``."""
    return tuple(str(i) for i in range(n))


def item_names(given: object, n: int, what: str) -> tuple[str, ...]:
    """Checked names for ``n`` items (``given``, or ``"0", "1", ...`` when empty): ``item_names((), 2, "Chain")``."""
    if not isinstance(given, (tuple, list)) or not all(isinstance(g, str) for g in given):
        raise IRError(f"{what} names= must be a tuple of str, got {given!r} (the keyword 'names' "
                      "is not an item name)")
    if not given:
        return default_names(n)
    if len(given) != n:
        raise IRError(f"{what} has {n} items but {len(given)} names: {tuple(given)!r}")
    if len(set(given)) != n:
        raise IRError(f"{what} item names must be unique, got {tuple(given)!r}")
    return tuple(given)


def by_keyword(what: str, positional: tuple[object, ...], names: object,
                named: dict[str, Any]) -> tuple[tuple[object, ...], object]:
    """(items, names) from keyword items (``Chain(stem=..., act=...)``), refusing mixed forms:
    ``by_keyword("Chain", (), (), {"a": relu}) == ((relu,), ("a",))``."""
    if not named:
        return positional, names
    if positional:
        raise IRError(f"{what} items must be all positional (named '0', '1', ...) or all keywords (named by "
                      f"the keyword), not both: got {len(positional)} positional and keywords {list(named)}")
    if names:
        raise IRError(f"{what}: give names= or keyword items, not both (keywords {list(named)})")
    return tuple(named.values()), tuple(named)


def lookup(what: str, pairs: tuple[tuple[str, Node], ...], key: str | int) -> Node:
    """The child named ``key`` (a str) or at position ``key`` (an int) among ``pairs``; a KeyError
    (IndexError for an int) naming ``what`` and the names otherwise: ``lookup("Chain", chain.named(), "act")``."""
    if isinstance(key, int) and not isinstance(key, bool):
        if -len(pairs) <= key < len(pairs):
            return pairs[key][1]
        raise IndexError(f"{what} has {len(pairs)} children, no index {key}; names: {[n for n, _ in pairs]}")
    for name, child in pairs:
        if name == key:
            return child
    raise KeyError(f"{what} has no child {key!r}; names: {[n for n, _ in pairs]}")


class Structural:
    """What nodes with named children offer: ``node["name"]``, ``node[0]``, ``named()``, ``contains(kind)``.

    >>> ir.Chain(stem=ir.Conv2d(3, 8, 3), act=ir.ReLU())["act"] == ir.ReLU()   # doctest: +SKIP
    True
    """

    __slots__ = ()

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(name, child) pairs, in order."""
        raise NotImplementedError

    def __getitem__(self, key: str | int) -> Node:
        """The child called ``key`` (a str), or at position ``key`` (an int); KeyError listing the names."""
        return lookup(type(self).__name__, self.named(), key)

    def contains(self, kind: type | tuple[type, ...]) -> bool:
        """True when a node below this one is a ``kind``: module-level descendants, and primitives a
        Block's forward uses (``PrimCall`` in its graphs, inline in its combinators).
        ``block.contains(ir.Conv)``."""
        from torchgraft.ir.traverse import contains

        return contains(self, kind)  # type: ignore[arg-type]

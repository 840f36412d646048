"""``fmap``: apply a function to every primitive site, the Flux/Functors way.

    >>> tanh_near_convs = lambda site: (ir.Tanh() if site.is_activation          # doctest: +SKIP
    ...                                 and site.parent.contains(ir.Conv) else None)
    >>> model = tg.passes.fmap(model, tanh_near_convs)                            # doctest: +SKIP

``fn(site)`` sees each primitive with its path, parent node, enclosing Block classes and
spelling (a layer, or an ``F.relu`` call inside a forward) and returns the replacement,
or None to keep it. Weights stay with the sites whose state is unchanged; a site whose
replacement has state of another shape is refused (use ``replace-module``, which
initialises new layers, or rebuild with ``tg.build``).
"""

from __future__ import annotations

from collections.abc import Callable

from torchgraft.errors import IRError
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Node
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join
from torchgraft.passes.rewrite import fmap as _fmap
from torchgraft.passes.selectors import Site

SiteFn = Callable[[Site], "Node | None"]


def _state(node: Node) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    return node.state() if isinstance(node, Primitive) else ()


def fmap(model: Model, fn: SiteFn) -> Model:
    """A new Model with ``fn(site)`` applied to every primitive site (None keeps the site).

    A replacement may drop state (an activation for a Conv: its weights leave ``model.weights``)
    or keep state of the same names and shapes (weights kept); anything else raises ``IRError``
    naming the site. The input model is not changed.
    """
    dropped: list[str] = []

    def visit(site: Site, spelling: str) -> Node | None:
        new = fn(site)
        if new is None or new == site.node:
            return None
        old_state, new_state = _state(site.node), _state(new)
        if new_state and new_state != old_state:
            raise IRError(f"fmap: the replacement of {site.path} ({_label(site.node)}) by {_label(new)} has "
                          f"state {[(n, s) for n, s, _ in new_state]} where the site had "
                          f"{[(n, s) for n, s, _ in old_state]}; fmap keeps weights and cannot initialise new "
                          "ones: use the replace-module pass, or rebuild the model with tg.build")
        if not new_state:
            dropped.extend(join(site.path, n) for n, _, _ in old_state)
        return new

    out = _fmap(model, visit)
    if out is model:
        return model
    gone = set(dropped)
    weights = {k: v for k, v in model.weights.items() if k not in gone}
    return out.with_root(out.root, weights=weights, frozen=tuple(k for k in model.frozen if k not in gone),
                         ties=_ties(model, gone))


def _ties(model: Model, gone: set[str]) -> tuple[tuple[str, str], ...]:
    """The ties left when the state keys ``gone`` went: an alias that went goes with them; a tie whose
    owner went while its alias stays is refused (the alias would read a tensor that is no longer there)."""
    def under(path: str) -> bool:
        return path in gone or any(k.startswith(path + ".") for k in gone)

    kept = []
    for alias, target in model.ties:
        if under(alias):
            continue
        if under(target):
            raise IRError(f"fmap: {target} was replaced by a layer without its state, but {alias} shares it (a "
                          f"tie); replace {alias} too, or keep {target}")
        kept.append((alias, target))
    return tuple(kept)


def _label(node: Node) -> str:
    label = getattr(node, "label", None)
    return str(label()) if callable(label) else type(node).__name__

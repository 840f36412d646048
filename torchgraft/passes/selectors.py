"""Selectors: which nodes a pass touches, addressed the way users think.

Text forms (usable as ``where=`` in a pipeline):

- ``layer1.*``, ``blocks.*.attn.qkv``, ``layer[12].*`` — a glob over dotted paths
  (graph ops inside a block are addressed as ``<block path>.<op name>``);
- ``kind:Conv2d`` — the torch op or original class name (``kind:Bottleneck``);
- ``in:Bottleneck`` — anything inside a Block of that class (``in:Sequential``: inside a Chain);
- ``~<selector>`` — everything the selector does not select (``~layer4.*``, ``~in:Bottleneck``);
- ``*`` — everything (the default).

In Python, selectors compose with ``&``, ``|`` and ``~``, and ``Where(fn)`` takes any
predicate ``fn(site) -> bool`` over a ``Site`` (``site.path``, ``site.node``, and
``site.enclosing``: the classes of the Blocks around it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from torchgraft.ir.nodes import Block, Chain, Node, Opaque
from torchgraft.ir.primitives import Activation, Primitive


@dataclass(frozen=True)
class Site:
    """Where a node sits: its path, the node, the classes of the Blocks enclosing it (``Sequential``
    for Chains), the node that holds it (``parent``: a Chain, a Block, ... None at the root) and how it
    is spelled (``"module"`` for layers; ``"functional"``, ``"method"``, ... for calls inside a forward).

    ``site.parent.contains(ir.Conv)`` asks whether a convolution sits beside or below it.
    """

    path: str
    node: Node
    enclosing: tuple[str, ...] = ()
    parent: Node | None = None
    spelling: str = "module"

    @property
    def is_activation(self) -> bool:
        """True for an activation (``nn.ReLU``, ``F.gelu``, ``x.sigmoid()``...)."""
        return isinstance(self.node, Activation)

    @property
    def is_primitive(self) -> bool:
        """True for a primitive layer or functional call (not a Block, Chain or other structure)."""
        return isinstance(self.node, Primitive)


def enclosing_label(node: Node) -> tuple[str, ...]:
    """What ``in:<name>`` matches for things inside ``node``: a Block's class, ``Sequential`` for a Chain."""
    if isinstance(node, Block):
        return (node.cls.name,)
    if isinstance(node, Chain):
        return ("Sequential",)
    return ()



class Selector:
    """Base class: ``sel(site) -> bool``; combine with ``&``, ``|``, ``~``."""

    def __call__(self, site: Site) -> bool:
        raise NotImplementedError

    def __and__(self, other: Selector) -> Selector:
        return Where(lambda s: self(s) and other(s), f"({self} & {other})")

    def __or__(self, other: Selector) -> Selector:
        return Where(lambda s: self(s) or other(s), f"({self} | {other})")

    def __invert__(self) -> Selector:
        return Where(lambda s: not self(s), f"~{self}")


@dataclass(frozen=True)
class Where(Selector):
    """Any predicate over a Site."""

    fn: Callable[[Site], bool]
    text: str = "<predicate>"

    def __call__(self, site: Site) -> bool:
        return bool(self.fn(site))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PathGlob(Selector):
    """Dotted path glob: ``layer1.*``, ``blocks.*.attn.qkv``."""

    pattern: str

    def __call__(self, site: Site) -> bool:
        return fnmatch.fnmatchcase(site.path, self.pattern)

    def __str__(self) -> str:
        return self.pattern


@dataclass(frozen=True)
class Kind(Selector):
    """Torch op name (``Conv2d``), primitive family (``Conv``) or original class name (``Bottleneck``)."""

    name: str

    def __call__(self, site: Site) -> bool:
        node = site.node
        if isinstance(node, Primitive):
            return self.name in (node.op, type(node).__name__)
        if isinstance(node, (Block, Opaque)):
            return self.name in (node.cls.name, node.cls.qualname, str(node.cls))
        return type(node).__name__ == self.name

    def __str__(self) -> str:
        return f"kind:{self.name}"


@dataclass(frozen=True)
class Inside(Selector):
    """Anything inside a Block of the given original class."""

    cls: str

    def __call__(self, site: Site) -> bool:
        return self.cls in site.enclosing

    def __str__(self) -> str:
        return f"in:{self.cls}"


EVERYTHING: Selector = Where(lambda s: True, "*")
SelectorLike = Union[Selector, str, Callable[[Site], bool], None]


def parse_selector(spec: SelectorLike) -> Selector:
    """A Selector from its text form, a predicate, or None (everything)."""
    if spec is None or spec == "*" or spec == "":
        return EVERYTHING
    if isinstance(spec, Selector):
        return spec
    if callable(spec):
        return Where(spec)
    if spec.startswith("~"):
        return ~parse_selector(spec[1:] or "*")
    if spec.startswith("kind:"):
        return Kind(spec[5:])
    if spec.startswith("in:"):
        return Inside(spec[3:])
    return PathGlob(spec)

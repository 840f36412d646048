"""Structural nodes: Chain, Parallel, SkipConnection, Block, Container, Opaque, ChildRef.

At module level (children of a Block, items of a Chain) a node owns state and maps to a
module: a Chain is an ``nn.Sequential``; a Block is an instance of a user class.
Inside a Block's ``body`` the same combinators describe the forward over ``ChildRef``s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

from torchgraft.errors import IRError
from torchgraft.ir.attr_values import AttrValue
from torchgraft.ir.extra_state import StateMethods
from torchgraft.ir.graph import Graph
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.values import Arg, Const


class CombineKind(enum.Enum):
    """How Parallel branches or a SkipConnection's two values are joined."""

    ADD = "add"
    MUL = "mul"
    CONCAT = "cat"


@dataclass(frozen=True, slots=True)
class Combine:
    """``Combine("add")``, ``Combine("cat", dim=1)``."""

    kind: CombineKind | str = CombineKind.ADD
    dim: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.kind, str):
            try:
                object.__setattr__(self, "kind", CombineKind(self.kind))
            except ValueError:
                raise IRError(f"unknown combine {self.kind!r}; use one of 'add', 'mul', 'cat'") from None

    def __str__(self) -> str:
        k = self.kind.value if isinstance(self.kind, CombineKind) else self.kind
        return f"cat(dim={self.dim})" if self.kind is CombineKind.CONCAT else k


def _combine(c: Combine | str) -> Combine:
    return c if isinstance(c, Combine) else Combine(c)


@dataclass(frozen=True, slots=True)
class ChildRef:
    """Inside a Block body: call the block's child at ``path``."""

    path: str


@dataclass(frozen=True, slots=True)
class ClassRef:
    """Where a user class came from: ``module`` and ``qualname`` (``torchvision.models.resnet``, ``Bottleneck``)."""

    module: str
    qualname: str

    @property
    def name(self) -> str:
        """The class's own name (last part of the qualname)."""
        return self.qualname.rsplit(".", 1)[-1]

    def __str__(self) -> str:
        return f"{self.module}.{self.qualname}"


def _names(given: tuple[str, ...], n: int, what: str) -> tuple[str, ...]:
    if not given:
        return tuple(str(i) for i in range(n))
    if len(given) != n:
        raise IRError(f"{what} has {n} items but {len(given)} names: {given!r}")
    if len(set(given)) != n:
        raise IRError(f"{what} item names must be unique, got {given!r}")
    return given


class Chain:
    """Sequential composition: ``Chain(a, b, c)(x) == c(b(a(x)))``.

    ``names`` are the item names (state_dict key parts), ``"0", "1", ...`` by default.
    """

    __slots__ = ("items", "names")
    items: tuple[Node, ...]
    names: tuple[str, ...]

    def __init__(self, *items: Node, names: tuple[str, ...] = ()) -> None:
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            items = tuple(items[0])
        for it in items:
            if not isinstance(it, NODE_TYPES):
                raise IRError(f"Chain item {it!r} is not an IR node")
        object.__setattr__(self, "items", tuple(items))
        object.__setattr__(self, "names", _names(tuple(names), len(items), "Chain"))

    def __setattr__(self, k: str, v: object) -> None:
        raise AttributeError("IR nodes are immutable; build a new Chain")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and (self.items, self.names) == (other.items, other.names)

    def __hash__(self) -> int:
        return hash(("Chain", self.items, self.names))

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.items))})"

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(name, item) pairs."""
        return tuple(zip(self.names, self.items))


@dataclass(frozen=True, slots=True)
class Parallel:
    """Fan-out then reduce: ``combine(b1(x), b2(x), ...)``."""

    branches: tuple[Node, ...]
    combine: Combine = field(default_factory=Combine)
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.branches) < 2:
            raise IRError(f"Parallel needs at least two branches, got {len(self.branches)}")
        object.__setattr__(self, "combine", _combine(self.combine))
        object.__setattr__(self, "names", _names(self.names, len(self.branches), "Parallel"))

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(name, branch) pairs."""
        return tuple(zip(self.names, self.branches))


@dataclass(frozen=True, slots=True)
class SkipConnection:
    """``combine(x, body(x))``: a residual connection when combine is add."""

    body: Node
    combine: Combine = field(default_factory=Combine)

    def __post_init__(self) -> None:
        object.__setattr__(self, "combine", _combine(self.combine))
        if not isinstance(self.body, NODE_TYPES):
            raise IRError(f"SkipConnection body {self.body!r} is not an IR node")


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A parameter or buffer owned directly by a Block: name, shape, dtype, kind."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    parameter: bool = True
    persistent: bool = True
    requires_grad: bool = True


@dataclass(frozen=True, slots=True)
class Block:
    """One instance of a user module class: its children, own state and forward body.

    ``body`` is a Graph, or a combinator tree over ``ChildRef``s. ``train_body`` is set
    when the forward differs in training mode (``if self.training: ...``).
    ``method`` records how the forward was captured (``"fx"``, ``"hand"``, ...).
    ``extra_state`` holds the class's ``get_extra_state``/``set_extra_state``, copied, when it has them
    (its state then has the key ``_extra_state``: ``ir.extra_state``).
    """

    cls: ClassRef
    children: tuple[tuple[str, Node], ...]
    body: Node
    state: tuple[StateSpec, ...] = ()
    train_body: Node | None = None
    method: str = "hand"
    constants: tuple[tuple[str, Const], ...] = ()
    extra_state: StateMethods | None = None

    def __post_init__(self) -> None:
        names = [n for n, _ in self.children] + [s.name for s in self.state]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise IRError(f"Block<{self.cls.name}> has duplicate member names {sorted(dup)}")
        if not isinstance(self.body, NODE_TYPES):
            raise IRError(f"Block<{self.cls.name}> body {self.body!r} is not an IR node")

    def child(self, name: str) -> Node:
        """The child called ``name`` (KeyError naming the known children otherwise)."""
        for n, c in self.children:
            if n == name:
                return c
        raise KeyError(f"Block<{self.cls.name}> has no child {name!r}; children: {[n for n, _ in self.children]}")


@dataclass(frozen=True, slots=True)
class Container:
    """An ``nn.ModuleList`` or ``nn.ModuleDict``: keeps its children, has no forward."""

    kind: str
    items: tuple[tuple[str, Node], ...]

    def __post_init__(self) -> None:
        if self.kind not in ("ModuleList", "ModuleDict"):
            raise IRError(f"Container kind must be 'ModuleList' or 'ModuleDict', got {self.kind!r}")
        if self.kind == "ModuleList" and [n for n, _ in self.items] != [str(i) for i in range(len(self.items))]:
            raise IRError("ModuleList items must be named '0', '1', ... in order")

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(key, item) pairs."""
        return self.items


@dataclass(frozen=True, slots=True)
class Opaque:
    """A module capture could not see into: kept whole, with the reason.

    ``ctor`` holds keyword arguments that rebuild it from ``cls`` when they could be
    recovered; ``state`` lists its persistent state (all of it, children included).
    """

    cls: ClassRef
    reason: str
    state: tuple[StateSpec, ...] = ()
    ctor: tuple[tuple[str, Arg], ...] | None = None


@dataclass(frozen=True, slots=True)
class PySource:
    """A Block body kept as Python source: the original ``forward`` (and methods it calls), copied.

    The last resort before Opaque, for forwards with data-dependent control flow
    (``if x.sum() > 0``): the emitted class runs the same Python. ``attrs`` are the plain
    attributes the code reads (``self.scale = 2.0``). Passes cannot see inside.
    """

    source: str
    attrs: tuple[tuple[str, AttrValue], ...] = ()

    def __post_init__(self) -> None:
        if "def forward(" not in self.source:
            raise IRError("PySource must define forward(self, ...)")
        for name, _ in self.attrs:
            if not name.isidentifier():
                raise IRError(f"PySource attribute name {name!r} is not an identifier")


Node = Union[Primitive, Chain, Parallel, SkipConnection, Block, Container, Opaque, ChildRef, Graph, PySource]
NODE_TYPES = (Primitive, Chain, Parallel, SkipConnection, Block, Container, Opaque, ChildRef, Graph, PySource)


def module_children(node: Node) -> tuple[tuple[str, Node], ...]:
    """The named submodules a module-level node owns (empty for primitives and refs)."""
    if isinstance(node, (Chain, Parallel, Container)):
        return node.named()
    if isinstance(node, SkipConnection):
        return (("body", node.body),)
    if isinstance(node, Block):
        return node.children
    return ()

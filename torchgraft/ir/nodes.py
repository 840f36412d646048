"""Structural nodes: Chain, Parallel, SkipConnection, Block, Container, Opaque, ChildRef.

At module level (children of a Block, items of a Chain) a node owns state and maps to a
module: a Chain is an ``nn.Sequential``; a Block is an instance of a user class.
Inside a Block's ``body`` the same combinators describe the forward over ``ChildRef``s.
"""

from __future__ import annotations

import keyword
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union, overload

from torchgraft.errors import IRError
from torchgraft.ir.attr_values import AttrValue
from torchgraft.ir.children import Structural, by_keyword, default_names, item_names, lookup
from torchgraft.ir.combine import Combine, CombineKind, as_combine
from torchgraft.ir.extra_state import StateMethods
from torchgraft.ir.graph import Graph
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.values import Arg, Const


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


class Pipeable:
    """``a >> b``: a flat Chain of ``a`` then ``b`` (see ``pipe``)."""

    __slots__ = ()

    def __rshift__(self, other: object) -> Chain:
        return pipe(self, other)  # type: ignore[arg-type]


def pipe(first: Node, second: Node) -> Chain:
    """``first >> second`` as one flat Chain: a Chain with default names on either side is spliced in,
    a Chain with its own names stays one item.

    >>> pipe(ir.LinearLayer(4, 8, activation="relu"), ir.LinearLayer(8, 2))   # doctest: +SKIP
    Chain(Linear(4, 8), ReLU, Linear(8, 2))
    """
    if not isinstance(second, NODE_TYPES):
        return NotImplemented  # type: ignore[no-any-return]

    def parts(node: Node) -> list[Node]:
        if isinstance(node, Chain) and node.names == default_names(len(node.items)):
            return list(node.items)
        return [node]

    return Chain(*parts(first), *parts(second))


class Chain(Structural, Pipeable):
    """Sequential composition: ``Chain(a, b, c)(x) == c(b(a(x)))``.

    Items are named ``"0", "1", ...`` when given positionally, by their keyword when given as
    keywords (``Chain(stem=conv, act=ir.ReLU())``), or by ``names=``: these names are the
    state_dict key parts. ``chain["stem"]`` and ``chain[0]`` give an item.

    ``cls``: the ``nn.Sequential`` subclass the captured module was (DenseNet's ``_Transition``,
    ``Conv2dNormActivation``; its forward is ``nn.Sequential``'s own), None for a plain one. It
    changes nothing the Chain computes; the emitter writes such a Chain as a class of that name.
    A pass that builds a new Chain drops it (the new one is written as ``nn.Sequential``).
    """

    __slots__ = ("items", "names", "cls")
    items: tuple[Node, ...]
    names: tuple[str, ...]
    cls: ClassRef | None

    def __init__(self, *items: Node, names: tuple[str, ...] = (), cls: ClassRef | None = None,
                 **named: Node) -> None:
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            items = tuple(items[0])
        if cls is not None and not isinstance(cls, ClassRef):
            raise IRError(f"Chain cls= takes the ClassRef of an nn.Sequential subclass, not {cls!r}"
                          " (an item cannot be named 'cls': pass names=(...) instead)")
        found, given = by_keyword("Chain", items, names, named)
        for it in found:
            if not isinstance(it, NODE_TYPES):
                raise IRError(f"Chain item {it!r} is not an IR node")
        object.__setattr__(self, "items", found)
        object.__setattr__(self, "names", item_names(given, len(found), "Chain"))
        object.__setattr__(self, "cls", cls)

    def __setattr__(self, k: str, v: object) -> None:
        raise AttributeError("IR nodes are immutable; build a new Chain")

    def __copy__(self) -> Chain:
        return self  # immutable: a copy is the same value

    def __deepcopy__(self, memo: dict[int, object]) -> Chain:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and (self.items, self.names, self.cls) == (other.items, other.names,
                                                                                    other.cls)

    def __hash__(self) -> int:
        return hash(("Chain", self.items, self.names, self.cls))

    def __repr__(self) -> str:
        tail = "" if self.cls is None else f", cls={self.cls.name}"
        if self.names == default_names(len(self.items)):
            return f"Chain({', '.join(map(repr, self.items))}{tail})"
        return f"Chain({', '.join(f'{n}={i!r}' for n, i in self.named())}{tail})"

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(name, item) pairs."""
        return tuple(zip(self.names, self.items))


_UNSET: Any = object()
CombineSpec = Union[Combine, CombineKind, str, Callable[..., Any]]
"""What ``combine=`` takes: a Combine, a kind or its name (``"max"``), or an allow-listed function of two
tensors (``torch.maximum`` is stored as ``max``; ``torch.atan2`` is folded left as a ``call``: see ``ir.combine``)."""


def _parallel_parts(args: tuple[Any, ...], combine: Any, names: Any,
                    named: dict[str, Any]) -> tuple[tuple[object, ...], Any, Any]:
    """(branches, combine, names) from any of Parallel's call forms."""
    if "branches" in named:  # Parallel(branches=(...), ...), as dataclasses.replace calls it
        if args:
            raise IRError("Parallel: give branches=(...) or branches as arguments, not both")
        args = (named.pop("branches"),)
    if args and isinstance(args[0], (tuple, list)):  # Parallel((b1, b2), combine, names)
        if len(args) > 3 or named:
            raise IRError("Parallel((b1, b2, ...), combine, names) takes no further branches")
        if len(args) > 1 and combine is not _UNSET:
            raise IRError("Parallel: combine given twice (positionally and as combine=)")
        if len(args) > 2 and names:
            raise IRError("Parallel: names given twice (positionally and as names=)")
        combine = args[1] if len(args) > 1 else combine
        names = args[2] if len(args) > 2 else names
        args = tuple(args[0])
    for b in args:
        if isinstance(b, (Combine, CombineKind, str)):
            raise IRError(f"Parallel branch {b!r} is not an IR node; pass the join as combine={b!r}")
    branches, names = by_keyword("Parallel", args, names, named)
    return branches, Combine() if combine is _UNSET else combine, names


@dataclass(frozen=True, slots=True, init=False)
class Parallel(Structural, Pipeable):
    """Fan-out then join: ``combine(b1(x), b2(x), ...)`` (``ir.combine`` lists the joins).

    ``Parallel(b1, b2, combine="max")`` names the branches ``"0", "1"``;
    ``Parallel(left=b1, right=b2, combine=ir.Concat(dim=1))`` by their keywords (state keys
    ``<path>.left.*``); ``Parallel((b1, b2), combine, names)`` is the field-by-field form.
    The keywords ``combine`` and ``names`` cannot name a branch.
    """

    branches: tuple[Node, ...]
    combine: Combine
    names: tuple[str, ...]

    @overload
    def __init__(self, branches: tuple[Node, ...] | list[Node], combine: CombineSpec = ...,
                 names: tuple[str, ...] = ...) -> None: ...
    @overload
    def __init__(self, *branches: Node, combine: CombineSpec = ..., names: tuple[str, ...] = ...,
                 **named: Node) -> None: ...
    def __init__(self, *branches: Any, combine: Any = _UNSET, names: Any = (), **named: Any) -> None:
        found, how, given = _parallel_parts(branches, combine, names, named)
        if len(found) < 2:
            raise IRError(f"Parallel needs at least two branches, got {len(found)}")
        for b in found:
            if not isinstance(b, NODE_TYPES):
                raise IRError(f"Parallel branch {b!r} is not an IR node")
        object.__setattr__(self, "branches", found)
        object.__setattr__(self, "combine", as_combine(how))
        object.__setattr__(self, "names", item_names(given, len(found), "Parallel"))

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(name, branch) pairs."""
        return tuple(zip(self.names, self.branches))


@dataclass(frozen=True, slots=True)
class SkipConnection(Structural, Pipeable):
    """``combine(x, body(x))``: a residual connection when combine is add; ``sub`` is ``x - body(x)``.

    Its one child is called ``body`` (state keys ``<path>.body.*``); ``skip["body"]`` gives it, and
    any other name is looked up in the body (``skip["reduce"] is skip.body["reduce"]``).
    """

    body: Node
    combine: Combine = field(default_factory=Combine)

    def __post_init__(self) -> None:
        object.__setattr__(self, "combine", as_combine(self.combine))
        if not isinstance(self.body, NODE_TYPES):
            raise IRError(f"SkipConnection body {self.body!r} is not an IR node")

    def named(self) -> tuple[tuple[str, Node], ...]:
        """``(("body", body),)``."""
        return (("body", self.body),)

    def __getitem__(self, key: str | int) -> Node:
        if key in ("body", 0, -1) or not isinstance(self.body, Structural) or isinstance(key, int):
            return lookup("SkipConnection", self.named(), key)
        try:
            return self.body[key]
        except KeyError:
            names = [n for n, _ in self.body.named()]
            raise KeyError(f"SkipConnection has no child {key!r}: its child is 'body', whose children are "
                           f"{names}") from None


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
class Block(Structural, Pipeable):
    """One instance of a user module class: its children, own state and forward body.

    ``body`` is a Graph, or a combinator tree over ``ChildRef``s. ``train_body`` is set
    when the forward differs in training mode (``if self.training: ...``).
    ``method`` records how the forward was captured (``"fx"``, ``"hand"``, ...).
    ``extra_state`` holds the class's ``get_extra_state``/``set_extra_state``, copied, when it has them
    (its state then has the key ``_extra_state``: ``ir.extra_state``). ``input_name`` is the forward's one
    parameter when ``body`` is a combinator tree (``forward(self, hidden_states)``; a Graph names its own).
    """

    cls: ClassRef
    children: tuple[tuple[str, Node], ...]
    body: Node
    state: tuple[StateSpec, ...] = ()
    train_body: Node | None = None
    method: str = "hand"
    constants: tuple[tuple[str, Const], ...] = ()
    extra_state: StateMethods | None = None
    input_name: str = "x"

    def __post_init__(self) -> None:
        if not isinstance(self.input_name, str) or not self.input_name.isidentifier() \
                or keyword.iskeyword(self.input_name):
            raise IRError(f"Block<{self.cls.name}> input_name {self.input_name!r} is not a Python parameter name")
        names = [n for n, _ in self.children] + [s.name for s in self.state]
        dup = {n for n, k in Counter(names).items() if k > 1}
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

    def named(self) -> tuple[tuple[str, Node], ...]:
        """(name, child) pairs: ``children``."""
        return self.children

    def __getitem__(self, key: str | int) -> Node:
        return lookup(f"Block<{self.cls.name}>", self.children, key)


@dataclass(frozen=True, slots=True)
class Container(Structural):
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
    if isinstance(node, (Chain, Parallel, Container, SkipConnection)):
        return node.named()
    if isinstance(node, Block):
        return node.children
    return ()

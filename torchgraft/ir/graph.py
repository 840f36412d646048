"""Dataflow graphs: SSA ops over named values, for forward code no combinator fits."""

from __future__ import annotations

import enum
import keyword
from dataclasses import dataclass, replace
from typing import Union

from torchgraft.errors import IRError
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.types import UNKNOWN, ValueType
from torchgraft.ir.values import Arg, Const, Ref, refs_in, rename_refs


@dataclass(frozen=True, slots=True)
class ChildCall:
    """Call a submodule of the enclosing block; ``path`` is relative to it (``"layer1.0"``)."""

    path: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Call a function by qualified name: ``torch.flatten``, ``operator.add``, ``helper.fn``.

    Names are resolved from an allow-list of modules (``torchgraft.ir.functions``),
    never evaluated.
    """

    qualname: str


@dataclass(frozen=True, slots=True)
class MethodCall:
    """Call a tensor method on the first argument: ``x.view(...)``."""

    name: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise IRError(f"method name {self.name!r} is not an identifier")


@dataclass(frozen=True, slots=True)
class GetAttr:
    """Read a parameter, buffer or attribute of the enclosing block (``self.class_token``)."""

    path: str


@dataclass(frozen=True, slots=True)
class PrimCall:
    """A stateless primitive called functionally: ``F.relu(x)`` is ``PrimCall(Activation(RELU, ...))``."""

    prim: Primitive


GUARD_KINDS = ("argument", "size")


@dataclass(frozen=True, slots=True)
class Guard:
    """A run-time check of an assumption capture took from an example: the op's one argument
    (a bool value) must be true, or the forward raises ``ValueError(message)``. Its value is None.

    ``Op("guard", Guard("captured with mask=None; ..."), (Ref("mask_is_none"),))`` is written
    ``if mask is not None: raise ValueError("captured with mask=None; ...")``.
    """

    message: str
    kind: str = "argument"
    """What was assumed: ``argument`` (None-ness or value of an argument) or ``size`` (a comparison
    of sizes: a branch the example took)."""
    site: str = ""
    """Where in the model's source the assumption was made (``file.py:123``), when known."""

    def __post_init__(self) -> None:
        if not isinstance(self.message, str) or not self.message:
            raise IRError("a Guard needs a non-empty message saying what was assumed and what to do")
        if self.kind not in GUARD_KINDS:
            raise IRError(f"Guard kind {self.kind!r} is not one of {GUARD_KINDS}")


Target = Union[ChildCall, FunctionCall, MethodCall, GetAttr, PrimCall, Guard]


@dataclass(frozen=True, slots=True)
class Op:
    """One statement: ``name = target(*args, **kwargs)`` with the result's type.

    ``source_var``: the variable the original source assigned this value to (``q_embed``), or "";
    a naming hint for emitters only, with no meaning: passes may keep or drop it.
    """

    name: str
    target: Target
    args: tuple[Arg, ...] = ()
    kwargs: tuple[tuple[str, Arg], ...] = ()
    type: ValueType = UNKNOWN
    source_var: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise IRError(f"op name {self.name!r} must be an identifier")
        if self.source_var and (not self.source_var.isidentifier() or keyword.iskeyword(self.source_var)):
            raise IRError(f"op {self.name!r}: source_var {self.source_var!r} must be an identifier or empty")
        if isinstance(self.target, MethodCall) and not self.args:
            raise IRError(f"method call {self.target.name!r} in op {self.name!r} needs the object as first arg")
        if isinstance(self.target, Guard) and (len(self.args) != 1 or self.kwargs):
            raise IRError(f"guard {self.name!r} takes exactly one argument, the condition that must hold")
        bad = [k for k, _ in self.kwargs if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k)]
        if bad:
            raise IRError(f"op {self.name!r}: keyword argument names {bad!r} are not identifiers; "
                          "a keyword argument must be a plain Python name")

    def reads(self) -> list[str]:
        """Names of the values this op reads."""
        out: list[str] = []
        for a in self.args:
            if isinstance(a, Ref):
                out.append(a.name)
            elif not isinstance(a, Const):
                out += refs_in(a)
        for _, a in self.kwargs:
            if not isinstance(a, Const):
                out += refs_in(a)
        return out


class InputKind(enum.Enum):
    """How a forward parameter is passed."""

    POSITIONAL = "positional"
    KEYWORD = "keyword"
    VAR_POSITIONAL = "var_positional"
    VAR_KEYWORD = "var_keyword"


@dataclass(frozen=True, slots=True)
class Input:
    """A forward parameter: name, type, how it is passed, default (a Const or None for none)."""

    name: str
    type: ValueType = UNKNOWN
    kind: InputKind = InputKind.POSITIONAL
    default: Const | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise IRError(f"input name {self.name!r} must be an identifier")


@dataclass(frozen=True, slots=True)
class Graph:
    """A forward body in SSA form: inputs, ops in order, and the output expression."""

    inputs: tuple[Input, ...]
    ops: tuple[Op, ...]
    output: Arg

    def __post_init__(self) -> None:
        defined: set[str] = set()
        for inp in self.inputs:
            if inp.name in defined:
                raise IRError(f"graph input {inp.name!r} is defined twice")
            defined.add(inp.name)
        for op in self.ops:
            for r in op.reads():
                if r not in defined:
                    raise IRError(f"op {op.name!r} reads {r!r} before it is defined; ops must be in dataflow order")
            if op.name in defined:
                raise IRError(f"value {op.name!r} is defined twice in the graph; names must be unique")
            defined.add(op.name)
        for r in refs_in(self.output):
            if r not in defined:
                raise IRError(f"graph output reads undefined value {r!r}")

    def users(self) -> dict[str, list[str]]:
        """Value name → names of ops (or ``"<output>"``) that read it."""
        out: dict[str, list[str]] = {i.name: [] for i in self.inputs}
        for op in self.ops:
            out.setdefault(op.name, [])
            for r in op.reads():
                out[r].append(op.name)
        for r in refs_in(self.output):
            out[r].append("<output>")
        return out


def renamed(g: Graph, mapping: dict[str, str], ops: tuple[Op, ...] | None = None) -> Graph:
    """``g`` (over ``ops``, when given) with every reference to a value renamed through ``mapping``; op names
    in ``mapping`` are renamed too.

    >>> renamed(g, {"expand": "pos"}, tuple(op for op in g.ops if op.name != "expand"))   # doctest: +SKIP
    """
    new = tuple(replace(op, name=mapping.get(op.name, op.name), args=tuple(rename_refs(a, mapping) for a in op.args),
                        kwargs=tuple((k, rename_refs(v, mapping)) for k, v in op.kwargs))
                for op in (g.ops if ops is None else ops))
    return Graph(g.inputs, new, rename_refs(g.output, mapping))


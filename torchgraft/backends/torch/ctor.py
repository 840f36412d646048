"""Constructor expressions as small trees, so that instances can be compared and generalised.

Every module-level IR node becomes an expression tree (``nn.Conv2d(64, 64, kernel_size=3)``
is ``Call("nn.Conv2d", (Lit(64), Lit(64)), (("kernel_size", Lit(3)),))``). Two instances of a
class are compared position by position on these trees (``unify.py``); where their literals
differ, a ``Param`` takes the literal's place and becomes a constructor argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Union

from torchgraft.errors import EmitError, IRError
from torchgraft.ir.children import default_names
from torchgraft.ir.functions import resolve
from torchgraft.ir.nodes import Block, Chain, Combine, CombineKind, Container, Node, Opaque, Parallel, SkipConnection
from torchgraft.ir.primitives import NOT_CTOR, Dropout, Primitive, torch_defaults
from torchgraft.ir.values import Arg, Const, Seq


@dataclass(frozen=True, eq=False)
class Lit:
    """A literal: int, float, bool, str, None, dtype, or a tuple/list of those."""

    value: object

    def key(self) -> tuple[str, str]:
        """Equality key: type and repr, so that ``1``, ``1.0`` and ``True`` stay different."""
        return type(self.value).__name__, repr(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lit) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


@dataclass(frozen=True)
class Call:
    """``head(*args, **kwargs)``.

    ``head`` is code, or a ``Param`` when instances build different torch layers the same way
    (``activation_layer(inplace=True)``). ``arg_names`` name the positional parameters;
    ``defaults`` are keyword defaults: they fill a keyword one instance leaves out, and
    arguments equal to them are left out when written.
    """

    head: str | Param
    args: tuple[CExpr, ...] = ()
    kwargs: tuple[tuple[str, CExpr], ...] = ()
    arg_names: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Lit], ...] = ()


@dataclass(frozen=True)
class Items:
    """Container contents: ``Sequential``/``ModuleList``/``ModuleDict`` members or a plain ``list``."""

    kind: str
    keys: tuple[str, ...]
    items: tuple[CExpr, ...]


@dataclass(frozen=True)
class Param:
    """A constructor argument of the class being written (a generalised position)."""

    index: int


@dataclass(frozen=True)
class Raw:
    """Code written as is (a call already rendered elsewhere)."""

    text: str


@dataclass(frozen=True)
class Guarded:
    """A container item only some instances have: written ``*([item] if flag else [])``, or with
    ``when_set`` (``flag`` is the layer class the item builds, None where it is absent)
    ``*([activation_layer(inplace=True)] if activation_layer is not None else [])``."""

    flag: int
    expr: CExpr
    when_set: bool = False


CExpr = Union[Lit, Call, Items, Param, Raw, Guarded]
ClassCall = Callable[[Node, str], "CExpr"]


def lit_of(arg: Arg) -> Lit:
    """A literal for a constant IR argument (Const, or a Seq of constants)."""
    if isinstance(arg, Const):
        return Lit(arg.value)
    if isinstance(arg, Seq):
        vals = tuple(lit_of(a).value for a in arg.items)
        return Lit(list(vals) if arg.is_list else vals)
    raise EmitError(f"constructor argument {arg!r} is not a constant")


def _positional_names(p: Primitive) -> tuple[str, ...]:
    names = tuple(f.name for f in fields(p) if f.name not in NOT_CTOR)
    return names[: 1 if isinstance(p, Dropout) else type(p).positional]


def prim_call(p: Primitive) -> Call:
    """``nn.<op>(...)`` for a primitive; leading positional arguments padded with their defaults."""
    pos, kw = p.ctor()
    names = _positional_names(p)
    defaults = torch_defaults(p.op)
    values = list(pos) + [defaults[n] for n in names[len(pos):] if n in defaults]
    return Call(f"nn.{p.op}", tuple(_value(v) for v in values), tuple((k, _value(v)) for k, v in kw.items()),
                names[: len(values)], tuple((k, Lit(v)) for k, v in defaults.items()))


def _value(v: object) -> CExpr:
    """A constructor argument: a literal, or a nested layer (``encoder_layer=nn.TransformerEncoderLayer(...)``)."""
    return prim_call(v) if isinstance(v, Primitive) else Lit(v)


def reparametrized(layer: CExpr, p: Primitive) -> CExpr:
    """``layer`` inside the calls that register ``p``'s reparametrizations, innermost first
    (``nn.utils.parametrizations.weight_norm(nn.Linear(4, 4), name="weight", dim=0)``)."""
    for r in p.reparam:
        layer = Call(r.function, (layer,), tuple((k, Lit(v)) for k, v in r.kwargs().items()))
    return layer


def function_ref(qualname: str) -> str:
    """How ``model.py`` names an allow-listed function: ``torch.atan2``, ``F.cosine_similarity``, ``pow``
    (a builtin), ``operator.pow`` (the emitter imports ``operator``/``math`` when written)."""
    resolve(qualname)  # allow-listed, and dotted identifiers only: the name becomes code
    ns, _, name = qualname.rpartition(".")
    return f"F.{name}" if ns == "torch.nn.functional" else name if ns == "builtins" else qualname


def _combine_kwargs(c: Combine) -> tuple[tuple[str, CExpr], ...]:
    if not isinstance(c.kind, CombineKind):
        raise EmitError(f"combine {c!r} is not one of {[k.value for k in CombineKind]}")
    if c.kind is CombineKind.CALL:
        try:
            return (("combine", Raw(function_ref(c.fn))),)
        except IRError as e:
            raise EmitError(f"combine function {c.fn!r}: {e}") from None
    return ((("combine", Lit(c.kind.value)),) + ((("dim", Lit(c.dim)),) if c.kind.takes_dim else ())
            + ((("in_place", Lit(True)),) if c.in_place else ()))


_COMBINE_DEFAULTS = (("combine", Lit("add")), ("dim", Lit(1)), ("in_place", Lit(False)))


def node_expr(node: Node, path: str, call_of: ClassCall) -> CExpr:
    """The constructor expression for a module-level node; ``call_of`` gives Block/Opaque calls and
    those of Chains that record an ``nn.Sequential`` subclass (``groups.seq_block``)."""
    if isinstance(node, Primitive):
        return reparametrized(prim_call(node), node)
    if isinstance(node, (Block, Opaque)) or (isinstance(node, Chain) and node.cls is not None):  # classes
        if isinstance(node, Opaque) and node.ctor is None:
            raise EmitError(f"module at {path or '<root>'} ({node.cls}) is opaque ({node.reason}) and its "
                            "constructor arguments could not be recovered from its attributes, so model.py "
                            "cannot rebuild it. Make its forward traceable, or replace it with a pass.")
        return call_of(node, path)

    def sub(name: str, child: Node) -> CExpr:
        return node_expr(child, f"{path}.{name}" if path else name, call_of)

    if isinstance(node, Chain):
        return Items("Sequential", node.names, tuple(sub(n, c) for n, c in node.named()))
    if isinstance(node, Container):
        return Items(node.kind, tuple(n for n, _ in node.items), tuple(sub(n, c) for n, c in node.items))
    if isinstance(node, Parallel):
        numbered = node.names == default_names(len(node.names))  # Parallel([...]): keys "0", "1", ...
        branches = Items("list" if numbered else "ModuleDict", node.names, tuple(sub(n, c) for n, c in node.named()))
        return Call("Parallel", (branches,), _combine_kwargs(node.combine), (), _COMBINE_DEFAULTS)
    if isinstance(node, SkipConnection):
        return Call("SkipConnection", (sub("body", node.body),), _combine_kwargs(node.combine), (),
                    _COMBINE_DEFAULTS)
    raise EmitError(f"cannot construct {type(node).__name__} at {path or '<root>'}")

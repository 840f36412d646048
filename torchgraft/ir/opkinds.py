"""Graph op kinds as data: one table says what an op computes, whatever its spelling, and its traits.

A forward spells one computation many ways: ``a + b``, ``torch.add(a, b)``, ``a.add(b)``, ``a.add_(b)``
and ``a += b`` (``operator.iadd``) are all ``OpKind.ADD``, the last two with ``in_place=True``.
``kind_of(op)`` is the one place that reads a function's qualified name or a method's name to say so;
code outside ``ir/`` asks it (``kind_of(op).kind is OpKind.GETITEM``) instead of comparing strings.

Each kind carries its traits (``TRAITS``): whether it only reads metadata (``metadata``), the
``CombineKind`` (by value) it means when it joins two values, the comparison that negates it, the Python
operator that spells it (``+``) and its shape rule (``broadcast``: elementwise with broadcasting,
``join``: cat/stack along a dim, ``scalar``: not a tensor). Activations have their own table
(``ir/activations.py``) and layers are primitives (``ir/primitives.py``).

    >>> kind_of(Op("s", FunctionCall("operator.iadd"), (Ref("a"), Ref("b"))))
    Kinded(kind=<OpKind.ADD: 'add'>, in_place=True)
    >>> TRAITS[OpKind.ADD].combine
    'add'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from torchgraft.ir.activations import FUNCTIONAL_ACTIVATIONS, ActKind, Spelling
from torchgraft.ir.graph import FunctionCall, GetAttr, MethodCall, Op, Target


class OpKind(enum.Enum):
    """What an op computes, independent of how it is spelled."""

    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    TRUEDIV = "truediv"
    FLOORDIV = "floordiv"
    MOD = "mod"
    MATMUL = "matmul"
    POW = "pow"
    AND = "and"
    OR = "or"
    XOR = "xor"
    LSHIFT = "lshift"
    RSHIFT = "rshift"
    NEG = "neg"
    POS = "pos"
    INVERT = "invert"
    NOT = "not"
    SETITEM = "setitem"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    CAT = "cat"
    STACK = "stack"
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    IS = "is"
    IS_NOT = "is_not"
    GETITEM = "getitem"
    GETATTR = "getattr"
    LEN = "len"
    SIZE = "size"
    DIM = "dim"
    NUMEL = "numel"
    BATCH_NORM = "batch_norm"
    DROPOUT = "dropout"
    EXPAND = "expand"
    RESHAPE = "reshape"
    VIEW = "view"


@dataclass(frozen=True, slots=True)
class Traits:
    """What a kind is, beyond its name (see the module docstring)."""

    shape: str = "broadcast"
    """The shape rule: ``broadcast``, ``join``, ``scalar`` (a Python value), ``index``, ``layer``, ``expand``
    (a view at the sizes given, ``-1`` keeping a dim: the input itself when every size is its own), ``reshape``
    (the same elements in row-major order at the sizes given, ``-1`` inferred; ``view`` also needs strides
    that allow it without a copy)."""
    metadata: bool = False
    """Reads only sizes or attributes: it may be written where it is used, after other ops."""
    combine: str = ""
    """The ``CombineKind`` value it means when it joins values (``a + b`` is ``add``; ``torch.cat`` is ``cat``;
    ``ir/combine.py`` reads its table of functions from here); empty when it is no join."""
    negation: OpKind | None = None
    """For a comparison: the comparison that is true exactly when this one is false."""
    symbol: str = ""
    """The Python operator that spells it (``+``, ``==``, ``is not``); empty when it has none."""
    random: bool = False
    """Draws from the RNG in training (its result differs between calls)."""
    pure: bool = True
    """No effect beyond its result in any spelling that is not in place (``setitem`` writes)."""


_B = "broadcast"
TRAITS: dict[OpKind, Traits] = {
    OpKind.ADD: Traits(_B, combine="add", symbol="+"),
    OpKind.SUB: Traits(_B, combine="sub", symbol="-"),
    OpKind.MUL: Traits(_B, combine="mul", symbol="*"),
    OpKind.TRUEDIV: Traits(_B, symbol="/"),
    OpKind.FLOORDIV: Traits(_B, symbol="//"),
    OpKind.MOD: Traits(_B, symbol="%"),
    OpKind.MATMUL: Traits("matmul", symbol="@"),
    OpKind.POW: Traits(_B, symbol="**"),
    OpKind.AND: Traits(_B, symbol="&"),
    OpKind.OR: Traits(_B, symbol="|"),
    OpKind.XOR: Traits(_B, symbol="^"),
    OpKind.LSHIFT: Traits(_B, symbol="<<"),
    OpKind.RSHIFT: Traits(_B, symbol=">>"),
    OpKind.NEG: Traits("same", symbol="-"),
    OpKind.POS: Traits("same", symbol="+"),
    OpKind.INVERT: Traits("same", symbol="~"),
    OpKind.NOT: Traits("scalar", symbol="not"),
    OpKind.SETITEM: Traits("index", pure=False),
    OpKind.MAXIMUM: Traits(_B, combine="max"),
    OpKind.MINIMUM: Traits(_B, combine="min"),
    OpKind.CAT: Traits("join", combine="cat"),
    OpKind.STACK: Traits("join", combine="stack"),
    OpKind.EQ: Traits(_B, negation=OpKind.NE, symbol="=="),
    OpKind.NE: Traits(_B, negation=OpKind.EQ, symbol="!="),
    OpKind.LT: Traits(_B, negation=OpKind.GE, symbol="<"),
    OpKind.LE: Traits(_B, negation=OpKind.GT, symbol="<="),
    OpKind.GT: Traits(_B, negation=OpKind.LE, symbol=">"),
    OpKind.GE: Traits(_B, negation=OpKind.LT, symbol=">="),
    OpKind.IS: Traits("scalar", negation=OpKind.IS_NOT, symbol="is"),
    OpKind.IS_NOT: Traits("scalar", negation=OpKind.IS, symbol="is not"),
    OpKind.GETITEM: Traits("index"),
    OpKind.GETATTR: Traits("scalar", metadata=True),
    OpKind.LEN: Traits("scalar", metadata=True),
    OpKind.SIZE: Traits("scalar", metadata=True),
    OpKind.DIM: Traits("scalar", metadata=True),
    OpKind.NUMEL: Traits("scalar", metadata=True),
    OpKind.BATCH_NORM: Traits("layer"),
    OpKind.DROPOUT: Traits("layer", random=True),
    OpKind.EXPAND: Traits("expand"),
    OpKind.RESHAPE: Traits("reshape"),
    OpKind.VIEW: Traits("reshape"),
}


@dataclass(frozen=True, slots=True)
class Kinded:
    """An op's kind and whether this spelling may write the result into its first argument (``operator.i*``
    write in place when the type supports it: a tensor has ``__iadd__`` but no ``__imatmul__``)."""

    kind: OpKind
    in_place: bool = False


_K = OpKind
_ARITHMETIC = (("add", _K.ADD), ("sub", _K.SUB), ("mul", _K.MUL), ("truediv", _K.TRUEDIV), ("floordiv", _K.FLOORDIV),
               ("mod", _K.MOD), ("matmul", _K.MATMUL), ("pow", _K.POW), ("and_", _K.AND), ("or_", _K.OR),
               ("xor", _K.XOR), ("lshift", _K.LSHIFT), ("rshift", _K.RSHIFT))
FUNCTIONS: dict[str, Kinded] = {
    **{f"operator.{n}": Kinded(k) for n, k in _ARITHMETIC},
    **{f"operator.i{n.rstrip('_')}": Kinded(k, True) for n, k in _ARITHMETIC},
    **{f"operator.{n}": Kinded(k) for n, k in (("eq", _K.EQ), ("ne", _K.NE), ("lt", _K.LT), ("le", _K.LE),
                                               ("gt", _K.GT), ("ge", _K.GE), ("is_", _K.IS),
                                               ("is_not", _K.IS_NOT), ("getitem", _K.GETITEM),
                                               ("setitem", _K.SETITEM), ("neg", _K.NEG), ("pos", _K.POS),
                                               ("invert", _K.INVERT), ("not_", _K.NOT))},
    **{f"torch.{n}": Kinded(k) for n, k in (("add", _K.ADD), ("sub", _K.SUB), ("subtract", _K.SUB),
                                            ("mul", _K.MUL), ("multiply", _K.MUL), ("div", _K.TRUEDIV),
                                            ("true_divide", _K.TRUEDIV), ("maximum", _K.MAXIMUM),
                                            ("minimum", _K.MINIMUM), ("cat", _K.CAT), ("concat", _K.CAT),
                                            ("concatenate", _K.CAT), ("stack", _K.STACK),
                                            ("numel", _K.NUMEL), ("dropout", _K.DROPOUT))},
    "torch.dropout_": Kinded(_K.DROPOUT, True),
    "builtins.getattr": Kinded(_K.GETATTR),
    "builtins.len": Kinded(_K.LEN),
    "torch.nn.functional.batch_norm": Kinded(_K.BATCH_NORM),
    **{f"torch.nn.functional.{n}": Kinded(_K.DROPOUT) for n in (
        "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")},
}
"""Every function spelling of a kind, by qualified name (``operator.iadd`` is ADD, in place). Spellings of one
kind take their operands in the same order; ``BATCH_NORM`` is ``F.batch_norm``'s signature only
(``torch.batch_norm`` orders its arguments differently and is not listed)."""

TENSOR_METHODS: dict[str, Kinded] = {
    "add": Kinded(_K.ADD), "sub": Kinded(_K.SUB), "mul": Kinded(_K.MUL), "div": Kinded(_K.TRUEDIV),
    "add_": Kinded(_K.ADD, True), "sub_": Kinded(_K.SUB, True), "mul_": Kinded(_K.MUL, True),
    "div_": Kinded(_K.TRUEDIV, True), "maximum": Kinded(_K.MAXIMUM), "minimum": Kinded(_K.MINIMUM),
    "eq": Kinded(_K.EQ), "ne": Kinded(_K.NE), "lt": Kinded(_K.LT), "le": Kinded(_K.LE), "gt": Kinded(_K.GT),
    "ge": Kinded(_K.GE), "size": Kinded(_K.SIZE), "dim": Kinded(_K.DIM), "numel": Kinded(_K.NUMEL),
    "expand": Kinded(_K.EXPAND), "reshape": Kinded(_K.RESHAPE), "view": Kinded(_K.VIEW),
}
"""Every ``Tensor`` method spelling of a kind (``x.add_(y)`` is ADD, in place). A method name says nothing
about a receiver that is not a tensor: ``method_kind`` is for receivers known to be tensors, except the
metadata reads (``size``/``dim``/``numel``), which ``kind_of`` reports for any receiver."""

_SPELLING: dict[Kinded, str] = {}
for _name, _kinded in FUNCTIONS.items():
    _SPELLING.setdefault(_kinded, _name)


def kind_of(op: Op | Target) -> Kinded | None:
    """The kind of a function call, or of a metadata method (``x.size(1)``); None for anything else. Tensor
    methods that compute (``x.add(y)``) need a tensor receiver: ask ``method_kind`` where that is known."""
    t = op.target if isinstance(op, Op) else op
    if isinstance(t, FunctionCall):
        return FUNCTIONS.get(t.qualname)
    if isinstance(t, MethodCall):
        found = TENSOR_METHODS.get(t.name)
        return found if found is not None and TRAITS[found.kind].metadata else None
    if isinstance(t, GetAttr):
        return Kinded(OpKind.GETATTR)
    return None


def method_kind(name: str) -> Kinded | None:
    """The kind of ``tensor.name(...)`` (``add_`` is ADD in place); None when the table has none."""
    return TENSOR_METHODS.get(name)


def is_kind(op: Op | Target, *kinds: OpKind) -> bool:
    """True when ``op`` is a function call (or metadata read) of one of ``kinds``, in any spelling."""
    found = kind_of(op)
    return found is not None and found.kind in kinds


def spelling(kind: OpKind, in_place: bool = False) -> str:
    """The qualified name that spells ``kind`` (``operator.add``; ``operator.iadd`` in place)."""
    try:
        return _SPELLING[Kinded(kind, in_place)]
    except KeyError:
        raise KeyError(f"no function spells {kind.name}{' in place' if in_place else ''}") from None


def negated(op: Op) -> Op | None:
    """The comparison ``op`` with its negation (``a == b`` -> ``a != b``), or None when ``op`` is not a
    plain comparison of two arguments that has one."""
    found = kind_of(op)
    neg = TRAITS[found.kind].negation if found is not None and not found.in_place else None
    if neg is None or op.kwargs or len(op.args) != 2 or not isinstance(op.target, FunctionCall) \
            or not op.target.qualname.startswith("operator."):
        return None
    return replace(op, target=FunctionCall(spelling(neg)))


def symbol_of(op: Op) -> str:
    """The Python operator that writes ``op`` (``+`` for ``operator.add``; ``+=`` for ``operator.iadd``), or ""
    for anything not spelled by an ``operator`` function that has one."""
    found = kind_of(op) if is_operator(op) else None
    symbol = TRAITS[found.kind].symbol if found is not None else ""
    return f"{symbol}=" if symbol and found is not None and found.in_place else symbol


_ACT_BY_TORCH = {k.torch_fn: k for k in ActKind if k.torch_fn}
_ACT_BY_METHOD = {k.method: k for k in ActKind if k.method}


def activation_of(target: Target) -> tuple[ActKind, Spelling, bool] | None:
    """(kind, spelling, in place) when ``target`` spells an activation: ``F.relu``, ``torch.relu_``, ``x.relu()``
    (the activation table is ``ir/activations.py``); None otherwise."""
    if isinstance(target, FunctionCall):
        ns, _, name = target.qualname.rpartition(".")
        inplace = name.endswith("_")
        base = name[:-1] if inplace else name
        if ns == "torch.nn.functional" and base in FUNCTIONAL_ACTIVATIONS:
            return FUNCTIONAL_ACTIVATIONS[base], Spelling.FUNCTIONAL, inplace
        if ns == "torch" and base in _ACT_BY_TORCH:
            return _ACT_BY_TORCH[base], Spelling.TORCH, inplace
    if isinstance(target, MethodCall):
        inplace = target.name.endswith("_")
        base = target.name[:-1] if inplace else target.name
        if base in _ACT_BY_METHOD:
            return _ACT_BY_METHOD[base], Spelling.METHOD, inplace
    return None


def function_in_place(qualname: str) -> bool:
    """True when calling the function ``qualname`` may write into its first argument: as the table says for
    the spellings it lists, else by the convention of a trailing ``_`` (``torch.relu_``) or ``operator.i*``."""
    found = FUNCTIONS.get(qualname)
    if found is not None:
        return found.in_place
    ns, _, name = qualname.rpartition(".")
    return (ns == "operator" and name in ("iconcat",)) or (ns.startswith("torch") and name.endswith("_")
                                                           and not name.startswith("_"))


def is_operator(op: Op | Target) -> bool:
    """True for a function from ``operator`` (spelled with a symbol or subscript, not a call)."""
    t = op.target if isinstance(op, Op) else op
    return isinstance(t, FunctionCall) and t.qualname.startswith("operator.")


__all__ = ["FUNCTIONS", "TENSOR_METHODS", "TRAITS", "Kinded", "OpKind", "Traits", "activation_of", "function_in_place",
           "is_kind", "is_operator", "kind_of", "method_kind", "negated", "spelling", "symbol_of"]

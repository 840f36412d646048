"""Arguments of dataflow ops: references to values, constants, sequences, ``self.training``."""

from __future__ import annotations

import enum
import math
import sys
from dataclasses import dataclass
from typing import Union

import torch

from torchgraft.errors import IRError

_CONST_TYPES = (type(None), bool, int, float, str, type(Ellipsis), complex,
                torch.dtype, torch.device, torch.memory_format, torch.layout)
_BUILTIN_SCALARS = (bool, int, float, complex, str)


def plain_constant(value: object) -> object:
    """``value`` as the builtin Python scalar it stands for; other values come back unchanged.

    numpy scalars (``np.float64(4.0)``, ``np.int64``, ``np.bool_``) become their
    ``.item()``; instances of subclasses of int/float/str/complex become the builtin
    type, which covers Enum members that mix one in (``IntEnum``, ``class Mode(str,
    Enum)``: they compare equal to that value, so torch sees no difference). A plain
    Enum member stays as it is: its value would compare differently, so callers refuse it.
    """
    np = sys.modules.get("numpy")  # no numpy scalar can exist unless numpy was imported
    if np is not None and isinstance(value, np.generic):
        value = value.item()
    for t in _BUILTIN_SCALARS:  # bool first: True is an int too
        if isinstance(value, t):
            return value if type(value) is t else _as_builtin(value, t)
    return value


def _as_builtin(value: object, t: type) -> object:
    # the base type's own conversions: a subclass's __str__/__int__ (an Enum's "Mode.X") is not its value
    if t is str:
        return str.__str__(value)  # type: ignore[arg-type]
    if t is int:
        return int.__int__(value)  # type: ignore[arg-type]
    if t is float:
        return float.__float__(value)  # type: ignore[arg-type]
    return complex(complex.__complex__(value))  # type: ignore[arg-type]


def _refusal(v: object) -> str:
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.ndarray):
        return (f"a numpy array (shape {tuple(v.shape)}, dtype {v.dtype}) cannot be a constant; "
                "make it a tensor (torch.as_tensor) held as a buffer")
    if isinstance(v, enum.Enum):
        return (f"Enum member {v!r} is not a constant: only Enums that mix in int, float or str "
                "(IntEnum, class E(str, Enum)) stand for their value")
    return (f"Const of type {type(v).__name__} ({v!r}) is not supported; "
            "constants must be None, bool, int, float, str, or a torch dtype/device")


@dataclass(frozen=True, slots=True)
class Ref:
    """A use of the value named ``name`` (a graph input or an op's result)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise IRError(f"Ref name must be a non-empty string, got {self.name!r}")


@dataclass(frozen=True, slots=True)
class Const:
    """A Python constant baked into the forward: None, bool, int, float, str, slice, dtype, ...

    Values are normalised on construction (``plain_constant``): a numpy scalar or an
    int/str Enum member is stored as the builtin int/float/str it equals, so it is
    written back as a plain literal. numpy arrays and plain Enum members are refused.
    """

    value: object

    def __post_init__(self) -> None:
        v = plain_constant(self.value)
        if not isinstance(v, _CONST_TYPES) or isinstance(v, enum.Enum):
            raise IRError(_refusal(v))
        object.__setattr__(self, "value", v)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Const):
            return NotImplemented
        a, b = self.value, other.value
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return type(a) is type(b) and a == b

    def __hash__(self) -> int:
        return hash((type(self.value).__name__, repr(self.value)))


@dataclass(frozen=True, slots=True)
class Seq:
    """A tuple or list whose items are arguments (``(x, 1)``, ``[a, b]``)."""

    items: tuple[Arg, ...]
    is_list: bool = False


@dataclass(frozen=True, slots=True)
class Slice:
    """``start:stop:step`` whose bounds are arguments (``x[:, :n]``)."""

    start: Arg
    stop: Arg
    step: Arg


@dataclass(frozen=True, slots=True)
class DictArg:
    """A dict with string keys whose values are arguments (structured outputs: ``{"logits": x}``)."""

    items: tuple[tuple[str, Arg], ...]

    def __post_init__(self) -> None:
        keys = [k for k, _ in self.items]
        if any(not isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
            raise IRError(f"DictArg keys must be unique strings, got {keys!r}")


@dataclass(frozen=True, slots=True)
class Training:
    """``self.training`` of the enclosing block: keeps train/eval behaviour dynamic."""


@dataclass(frozen=True, slots=True)
class ByMode:
    """A constant that differs between modes: ``train if self.training else eval`` (``dropout_p``)."""

    train: Const
    eval: Const


Arg = Union[Ref, Const, Seq, Slice, DictArg, Training, ByMode]


def refs_in(arg: Arg) -> list[str]:
    """Names of all values an argument reads, in order."""
    if isinstance(arg, Ref):
        return [arg.name]
    if isinstance(arg, Seq):
        return [n for item in arg.items for n in refs_in(item)]
    if isinstance(arg, Slice):
        return [n for part in (arg.start, arg.stop, arg.step) for n in refs_in(part)]
    if isinstance(arg, DictArg):
        return [n for _, v in arg.items for n in refs_in(v)]
    return []


def rename_refs(arg: Arg, mapping: dict[str, str]) -> Arg:
    """The argument with every Ref renamed through ``mapping`` (names not in it stay)."""
    if isinstance(arg, Ref):
        return Ref(mapping.get(arg.name, arg.name))
    if isinstance(arg, Seq):
        return Seq(tuple(rename_refs(i, mapping) for i in arg.items), arg.is_list)
    if isinstance(arg, Slice):
        return Slice(*(rename_refs(p, mapping) for p in (arg.start, arg.stop, arg.step)))
    if isinstance(arg, DictArg):
        return DictArg(tuple((k, rename_refs(v, mapping)) for k, v in arg.items))
    return arg


def const_arg(value: object) -> Arg:
    """An argument for a plain Python value: tuples and lists become Seq, the rest Const."""
    if isinstance(value, (tuple, list)):
        return Seq(tuple(const_arg(v) for v in value), isinstance(value, list))
    return Const(value)

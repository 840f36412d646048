"""Value types: tensors with symbolic dims, and the non-tensor values a forward passes around."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Union

from torchgraft.errors import IRError

Dim = Union[int, str]
"""A tensor dimension: a fixed size, a symbol such as ``"N"`` for a size that may vary, or a size
derived from symbols (``"N*4"``, ``"T-1"``, ``"N*T"``: see ``is_dim_expr``)."""

_ATOM = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
_DIM_EXPR = re.compile(rf"-?{_ATOM}(?:(?:\*|//|\+|-){_ATOM})*")


def is_dim_expr(d: str) -> bool:
    """Whether ``d`` is a derived dim: symbols and ints joined by ``*``, ``//``, ``+``, ``-`` (no spaces,
    no brackets, a leading ``-`` allowed), naming at least one symbol. Checked by pattern, never evaluated.

    >>> is_dim_expr("N*4"), is_dim_expr("T-1"), is_dim_expr("N*T"), is_dim_expr("N**2"), is_dim_expr("f(N)")
    (True, True, True, False, False)
    """
    return bool(_DIM_EXPR.fullmatch(d)) and re.search(r"[A-Za-z_]", d) is not None

_DTYPE_SHORT = {
    "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "b1",
}


@dataclass(frozen=True, slots=True)
class TensorType:
    """Shape (ints or symbols), dtype name (``"float32"``) and device name (``"cpu"``).

    >>> TensorType(("N", 3, 32, 32))
    TensorType(shape=('N', 3, 32, 32), dtype='float32', device='cpu')
    """

    shape: tuple[Dim, ...]
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple):
            raise IRError(f"TensorType.shape must be a tuple, got {self.shape!r}; write shape=tuple(...)")
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0):
                raise IRError(f"TensorType dim {d!r} in {self.shape!r} must be a size >= 0 or a symbol name")
            if isinstance(d, str) and not d.isidentifier() and not is_dim_expr(d):
                raise IRError(f"symbolic dim {d!r} must be an identifier such as 'N', or an expression of symbols "
                              "and ints joined by *, //, +, - such as 'N*4' or 'T-1'")
        if self.dtype not in _DTYPE_SHORT and not self.dtype.isidentifier():
            raise IRError(f"unknown dtype {self.dtype!r}; use a torch dtype name such as 'float32'")

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __str__(self) -> str:
        short = _DTYPE_SHORT.get(self.dtype, self.dtype)
        dev = "" if self.device == "cpu" else f"@{self.device}"
        return f"{short}[{', '.join(str(d) for d in self.shape)}]{dev}"


@dataclass(frozen=True, slots=True)
class ScalarType:
    """A non-tensor value: ``"int"``, ``"float"``, ``"bool"``, ``"None"``, ``"tuple"``, ``"size"``, ...

    ``items`` holds element types for tuples and lists when known.
    """

    name: str
    items: tuple[ValueType, ...] = ()

    def __str__(self) -> str:
        if self.items:
            return f"{self.name}[{', '.join(str(i) for i in self.items)}]"
        return self.name


ValueType = Union[TensorType, ScalarType]
UNKNOWN = ScalarType("unknown")


def type_of(value: object, symbols: dict[int, str] | None = None, meta_is: str | None = None) -> ValueType:
    """The IR type of a runtime value (tensors, numbers, tuples, ...).

    ``symbols`` maps concrete sizes to symbol names for dims that vary
    (``{2: "N"}`` turns a leading batch of 2 into ``N``; only dim 0 is mapped).
    ``meta_is`` names the device a meta tensor stands for (a replay on meta tensors).
    """
    import torch

    if isinstance(value, torch.Tensor):
        shape: tuple[Dim, ...] = tuple(value.shape)
        if symbols and shape and shape[0] in symbols:
            shape = (symbols[shape[0]], *shape[1:])
        device = value.device.type
        return _tensor_type(shape, value.dtype, meta_is if meta_is and device == "meta" else device)
    if value is None:
        return ScalarType("None")
    if isinstance(value, (tuple, list)):
        name = "tuple" if isinstance(value, tuple) else "list"
        if isinstance(value, torch.Size):
            name = "size"
        return ScalarType(name, tuple(type_of(v, symbols, meta_is) for v in value))
    if isinstance(value, dict):
        return ScalarType("dict", tuple(type_of(v, symbols, meta_is) for v in value.values()))
    return ScalarType(type(value).__name__)


@functools.lru_cache(maxsize=65536)
def _tensor_type(shape: tuple[Dim, ...], dtype: object, device: str) -> TensorType:
    """TensorTypes are immutable: one per (shape, dtype, device), validated once."""
    return TensorType(shape, str(dtype).removeprefix("torch."), device)


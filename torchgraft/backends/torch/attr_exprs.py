"""Constructor expressions for the attributes of copied forwards (``PySource.attrs``).

Constants are literals (``ctor.lit_of``); the values of ``ir.attr_values`` are built the
way the original ``__init__`` built them: ``BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))`` for a
helper object, the helper's name for a helper function, ``torch.tensor([...], dtype=...)``
for a small tensor, and a list or tuple of those.
"""

from __future__ import annotations

from typing import Any

from torchgraft.backends.torch.ctor import Call, CExpr, Items, Raw, lit_of
from torchgraft.backends.torch.modules import lit_code
from torchgraft.ir.attr_values import AttrDict, AttrList, AttrValue, HelperName, HelperObject, TensorLiteral


def attr_expr(value: AttrValue) -> CExpr:
    """The expression that builds one attribute value in ``__init__``."""
    if isinstance(value, HelperObject):
        return Call(value.helper, (), tuple((k, attr_expr(v)) for k, v in value.kwargs))
    if isinstance(value, HelperName):
        return Raw(value.helper)
    if isinstance(value, TensorLiteral):
        return Raw(tensor_code(value))
    if isinstance(value, AttrList):
        items = Items("list", tuple(str(i) for i in range(len(value.items))),
                      tuple(attr_expr(v) for v in value.items))
        return items if value.is_list else Call("tuple", (items,))
    if isinstance(value, AttrDict):
        return Call("dict", (), tuple((k, attr_expr(v)) for k, v in value.items))
    return lit_of(value)


def _nested(values: tuple[Any, ...], shape: tuple[int, ...]) -> Any:
    if not shape:
        return values[0]
    step = len(values) // shape[0] if shape[0] else 0
    return [_nested(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def tensor_code(t: TensorLiteral) -> str:
    """``torch.tensor(<nested values>, dtype=torch.<dtype>)`` (``torch.empty`` for no elements)."""
    if 0 in t.shape:
        return f"torch.empty({lit_code(t.shape)}, dtype=torch.{t.dtype})"
    return f"torch.tensor({lit_code(_nested(t.values, t.shape))}, dtype=torch.{t.dtype})"

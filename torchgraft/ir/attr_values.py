"""Attribute values of copied forwards (``PySource.attrs``) that are not plain constants.

A copied forward reads ``self.<attr>``; most such attributes are constants (``Arg``). A few
are objects the original ``__init__`` built from the model's own helpers, and are built the
same way in the emitted ``__init__``:

* ``HelperObject``: an instance of a copied helper class, from keyword arguments
  (``self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=4.135)``);
* ``HelperName``: a copied helper function held as an attribute (``self.box_similarity = box_iou``);
* ``TensorLiteral``: a small tensor written out (``torch.tensor([[-8.0, ...]], dtype=torch.float32)``);
* ``AttrList``: a list or tuple of any of these (AnchorGenerator's ``cell_anchors``);
* ``AttrDict``: a dict of them with identifier keys (RPN's ``_post_nms_top_n``).
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass
from typing import Union

from torchgraft.errors import IRError
from torchgraft.ir.values import Arg

MAX_TENSOR_LITERAL = 4096
"""Elements a ``TensorLiteral`` may hold: bigger tensors belong in buffers."""


@dataclass(frozen=True, slots=True)
class HelperObject:
    """``helper(**kwargs)``: an instance of the copied helper class named ``helper``."""

    helper: str
    kwargs: tuple[tuple[str, AttrValue], ...] = ()

    def __post_init__(self) -> None:
        if not self.helper.isidentifier() or any(not k.isidentifier() for k, _ in self.kwargs):
            raise IRError(f"HelperObject {self.helper!r} needs identifier names")


@dataclass(frozen=True, slots=True)
class HelperName:
    """The copied helper function named ``helper``, held as a value."""

    helper: str

    def __post_init__(self) -> None:
        if not self.helper.isidentifier():
            raise IRError(f"HelperName {self.helper!r} is not an identifier")


@dataclass(frozen=True, slots=True)
class TensorLiteral:
    """A tensor written element by element: flat ``values`` (row-major), ``shape`` and ``dtype`` name."""

    values: tuple[float | int | bool, ...]
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if math.prod(self.shape) != len(self.values) or len(self.values) > MAX_TENSOR_LITERAL:
            raise IRError(f"TensorLiteral of shape {self.shape} has {len(self.values)} values "
                          f"(at most {MAX_TENSOR_LITERAL})")
        if not self.dtype.isidentifier():
            raise IRError(f"TensorLiteral dtype {self.dtype!r} is not a torch dtype name")


@dataclass(frozen=True, slots=True)
class AttrList:
    """A list (``is_list``) or tuple of attribute values."""

    items: tuple[AttrValue, ...]
    is_list: bool = True


@dataclass(frozen=True, slots=True)
class AttrDict:
    """A dict whose keys are identifiers (``{"training": 2000, "testing": 1000}``), written ``dict(...)``."""

    items: tuple[tuple[str, AttrValue], ...]

    def __post_init__(self) -> None:
        keys = [k for k, _ in self.items]
        if any(not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k) for k in keys):
            raise IRError(f"AttrDict keys must be identifiers, got {keys!r}")


AttrValue = Union[Arg, HelperObject, HelperName, TensorLiteral, AttrList, AttrDict]

ATTR_VALUE_CLASSES = (HelperObject, HelperName, TensorLiteral, AttrList, AttrDict)

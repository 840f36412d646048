"""Plain-torch stand-ins for library functions that call compiled extension ops.

torchvision's ``nms`` calls ``torch.ops.torchvision.nms`` and ``roi_align`` calls
``torch.ops.torchvision.roi_align`` (or a lazily ``torch.compile``-d Python version): a
copied forward that calls them would need torchvision in ``model.py``. Where copied code
reaches one of them, the stand-in below is copied in its place, under the same name:

* ``nms``: greedy non-maximum suppression with the kernel's semantics (boxes taken by
  descending score, a box suppressed when its IoU with a kept box is strictly greater than
  the threshold, the IoU computed as the kernel computes it). Boxes of exactly equal score are
  taken in index order, where the compiled kernel's order among them is unspecified;
* ``roi_align``: the same checks and box conversion as torchvision's ``roi_align``, then
  torchvision's own pure-Python ``_roi_align`` (copied from its source, not compiled): what
  torchvision itself runs without its compiled ops; against the compiled kernel it agrees up to
  float rounding. Quantized inputs (which need the compiled ops) raise.

``SUBSTITUTES`` maps the original ``(module, qualname)`` to the stand-in and the globals it
borrows from the original's module (copied like any helper's globals). Each substitution is
listed in the capture report's notes.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair


def _borrowed(*args: Any, **kwargs: Any) -> Any:
    """Stands for a function of the original library; the copy resolves it to the original's source."""
    raise RuntimeError("a borrowed helper is resolved from the original library at capture")


_roi_align = check_roi_boxes_shape = convert_boxes_to_roi_format = _borrowed


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression in plain torch (torchvision's kernel semantics: strict ``>``)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def roi_align(input: Tensor, boxes: Any, output_size: Any, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align`` for unquantized inputs, always on its pure-Python path."""
    check_roi_boxes_shape(boxes)
    rois = boxes
    output_size = _pair(output_size)
    if not isinstance(rois, torch.Tensor):
        rois = convert_boxes_to_roi_format(rois)
    if input.is_quantized:
        raise NotImplementedError("roi_align of a quantized input needs torchvision's compiled ops")
    return _roi_align(input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned)


def _assert_has_ops() -> None:
    """torchvision's check for its compiled ops: model.py never has them, so the path needing them fails."""
    raise RuntimeError("this code path needs torchvision's compiled ops, which model.py does not import")


@dataclass(frozen=True)
class Substitute:
    """A stand-in function and the globals it takes from the original's module (``unwrap``: through
    ``__wrapped__``, for names the library wraps, e.g. torchvision's lazily compiled ``_roi_align``)."""

    function: types.FunctionType
    borrowed: tuple[str, ...] = ()
    unwrap: tuple[str, ...] = ()


SUBSTITUTES: dict[tuple[str, str], Substitute] = {
    ("torchvision.ops.boxes", "nms"): Substitute(nms),  # type: ignore[arg-type]
    ("torchvision.ops.roi_align", "roi_align"): Substitute(
        roi_align, ("_roi_align", "check_roi_boxes_shape", "convert_boxes_to_roi_format"),  # type: ignore[arg-type]
        ("_roi_align",)),
    ("torchvision.extension", "_assert_has_ops"): Substitute(_assert_has_ops),  # type: ignore[arg-type]
}
"""Keyed by the original's ``(module, qualname)``, or by ``(module, name)`` of a global that a
function of that module reads (the original may be patched, as a test fixture patches
``torchvision.ops.boxes._assert_has_ops``)."""


_BY_READER = {("torchvision.ops.boxes", "_assert_has_ops"): ("torchvision.extension", "_assert_has_ops")}


def substitute_for(value: Any, reader: tuple[str, str] | None = None
                   ) -> tuple[types.FunctionType, dict[str, Any], str] | None:
    """(stand-in, its globals, the origin to record) when ``value`` (global ``reader[1]`` of module
    ``reader[0]``, if given) is a function with a plain-torch stand-in, else None."""
    key = (getattr(value, "__module__", None), getattr(value, "__qualname__", None))
    if reader is not None and reader in _BY_READER:
        key = _BY_READER[reader]
    sub = SUBSTITUTES.get(key)  # type: ignore[arg-type]
    if sub is None or not isinstance(value, types.FunctionType):
        return None
    namespace = dict(sub.function.__globals__)
    for name in sub.borrowed:
        original: Any = value.__globals__[name]
        while name in sub.unwrap and getattr(original, "__wrapped__", original) is not original:
            original = original.__wrapped__  # (a compile that was skipped wraps the function in itself)
        namespace[name] = original
    fn = sub.function
    return fn, namespace, f"substitute:{key[0]}.{key[1]} -> {fn.__module__}.{fn.__qualname__}"


def substitution_notes(helpers: Mapping[str, Any]) -> list[str]:
    """Report lines for the helpers that are stand-ins (origin ``substitute:...``)."""
    prefix = "substitute:"
    return [f"substituted {h.origin[len(prefix):].split(' -> ')[0]} with a plain-torch stand-in "
            f"({name}, torchgraft.frontends.substitutes) so that model.py runs without its library"
            for name, h in sorted(helpers.items()) if h.origin.startswith(prefix)]


__all__ = ["SUBSTITUTES", "Substitute", "nms", "roi_align", "substitute_for", "substitution_notes"]

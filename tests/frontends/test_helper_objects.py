"""Copied forwards that use plain helper classes, hold helper objects, functions, tensor lists and dicts
as attributes, call functions through a module alias, or reach two helpers of the same name."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from zoo import _reference_nms, run_fresh

import torchgraft
from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.helper_objects import attr_value
from torchgraft.frontends.substitutes import nms
from torchgraft.ir.attr_values import AttrDict, HelperName, HelperObject
from torchgraft.ir.model import Helper
from torchgraft.ir.serialize import from_json, to_json
from torchgraft.ir.values import Const


class Coder:
    """A plain helper class whose instances a module holds (like torchvision's BoxCoder)."""

    def __init__(self, weights: tuple[float, float], clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = weights
        self.clip = clip

    def decode(self, x: Tensor) -> Tensor:
        return (x * self.weights[0] + self.weights[1]).clamp(max=self.clip)


class AStrict(Coder):
    """A subclass of a helper class that keeps none of its arguments: restored from its attributes."""

    def __init__(self, level: float) -> None:
        super().__init__((level, 0.0), clip=10.0)


class Pair:
    """A plain helper class a forward builds (like torchvision's ImageList)."""

    def __init__(self, tensors: Tensor, sizes: list[int]) -> None:
        self.tensors = tensors
        self.sizes = sizes

    def total(self) -> Tensor:
        return self.tensors.sum() + len(self.sizes)


def _cast(x: Tensor) -> Tensor:
    return x.float()


def _cast_other(x: Tensor) -> Tensor:
    return x.double().float() + 1


_cast_other.__name__ = "_cast"  # a second helper called ``_cast`` (torchvision has two _fake_cast_onnx)


def _twice(x: Tensor) -> Tensor:
    return _cast_other(x) * 2


toyops = types.ModuleType("toyops")  # a module model.py may not import, used as ``toyops.f``
toyops.twice = _twice  # type: ignore[attr-defined]


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.coder = Coder((2.0, 0.5))
        self.similarity = _cast
        self.anchors = [torch.tensor([[-1.5, 2.0], [0.25, 3.0]]), torch.arange(3)]
        self.top_n = {"training": 7, "testing": 3}
        self.strict = AStrict(3.0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x)
        if y.sum() > 0:  # data-dependent: the forward is copied as source
            y = self.coder.decode(y) + self.strict.decode(y)
        pair = Pair(y, [1, 2])
        k = self.top_n["training" if self.training else "testing"]
        return (pair.total() + self.similarity(y)[:, :k].sum() + toyops.twice(y) + self.anchors[0].sum()
                + self.anchors[1].sum())


def test_helper_objects_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Toy().eval()
    x, other = torch.randn(2, 4), torch.randn(5, 4)
    ir_model = torchgraft.capture(model, (x,))
    assert ir_model.report.methods[""] == "source", ir_model.report.summary()
    assert from_json(to_json(ir_model)) == ir_model  # helper objects, tensor lists, dicts survive the IR file
    code = torchgraft.emit(ir_model)
    assert "Coder(weights=(2.0, 0.5)" in code.source and "class Pair:" in code.source
    assert "restored(cls=AStrict, state=dict(weights=(3.0, 0.0), clip=10.0))" in code.source
    assert code.source.index("class Coder:") < code.source.index("class AStrict(Coder):")
    assert "self.similarity = _cast" in code.source and "_cast_2" in code.source
    assert "twice(" in code.source and "toyops" not in code.source
    assert "torch.tensor([[-1.5, 2.0], [0.25, 3.0]], dtype=torch.float32)" in code.source
    code.save(tmp_path)
    outs = run_fresh(tmp_path, {"a": x, "b": other})
    with torch.no_grad():
        torch.testing.assert_close(outs["a"], model(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(outs["b"], model(other), atol=1e-6, rtol=0)


class Unrebuildable:
    def __init__(self, n: int) -> None:
        self.double = 2 * n  # the argument is not kept as it was passed


class Slotted:
    __slots__ = ("double",)

    def __init__(self, n: int) -> None:
        self.double = 2 * n


def test_helper_object_that_does_not_rebuild_is_restored_from_its_attributes() -> None:
    helpers: dict[str, Helper] = {}
    value = attr_value(Unrebuildable(3), helpers, "self.thing")
    assert value == HelperObject("restored", (("cls", HelperName("Unrebuildable")),
                                              ("state", AttrDict((("double", Const(6)),)))))
    assert {"Unrebuildable", "restored"} <= set(helpers)
    with pytest.raises(TraceError, match=r"self\.other.*Slotted"):
        attr_value(Slotted(3), {}, "self.other")


def test_big_tensor_attribute_is_refused() -> None:
    with pytest.raises(TraceError, match="make it a buffer"):
        attr_value([torch.zeros(100, 100)], {}, "self.table")


def test_nms_stand_in_matches_the_reference() -> None:
    torch.manual_seed(0)
    xy = torch.rand(300, 2) * 50
    boxes = torch.cat([xy, xy + torch.rand(300, 2) * 20 + 1], dim=1)
    scores = torch.rand(300)
    for threshold in (0.0, 0.3, 0.7, 1.0):
        assert torch.equal(nms(boxes, scores, threshold), _reference_nms(boxes, scores, threshold))
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)

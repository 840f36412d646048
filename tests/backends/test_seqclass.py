"""One emitted class per original class (issue 12): ``nn.Sequential`` subclasses written as their own
class (``seqclass.py``), and ShuffleNet's two ``InvertedResidual`` forwards merged behind one flag
(``variants._alternative``). Round trips compare with eager at batches 1 and 3 (atol 1e-5 x max|out|)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.ir.nodes import Chain, ClassRef
from torchgraft.ir.serialize import from_json, to_json
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify


def _classes(source: str) -> list[str]:
    return re.findall(r"^class (\w+)\(", source, re.M)


def _round_trip(model: nn.Module, size: int = 64) -> str:
    """Capture at batch 2, emit, load strict=True; outputs equal eager at batches 1 and 3."""
    ir_model = torchgraft.capture(model, (torch.randn(2, 3, size, size),))
    verify(ir_model)
    code = torchgraft.emit(ir_model)
    rebuilt = code.materialize()
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    fresh = code.materialize(load_weights=False)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 3, size, size)
            ref = model(x)
            for out in (rebuilt.eval()(x), fresh.eval()(x)):
                torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)
    return code.source


def test_densenet121_transition_is_its_own_class(torchvision: Any) -> None:  # noqa: ANN401
    torch.manual_seed(0)
    source = _round_trip(torchvision.models.densenet121().eval())
    assert _classes(source) == ["_DenseLayer", "_DenseBlock", "_Transition", "DenseNet"]
    transition = source.split("class _Transition(nn.Sequential):")[1].split("\nclass ")[0]
    assert "def forward" not in transition  # nn.Sequential's own forward
    assert "self.norm = nn.BatchNorm2d(in_channels)" in transition
    assert "transition1=_Transition(256, 128)" in source


def test_shufflenet_one_inverted_residual_class(torchvision: Any) -> None:  # noqa: ANN401
    torch.manual_seed(0)
    source = _round_trip(torchvision.models.shufflenet_v2_x0_5().eval())
    assert _classes(source) == ["InvertedResidual", "ShuffleNetV2"]
    assert "if self.use_branch1:" in source and "x.chunk(2, dim=1)" in source
    assert "InvertedResidual(24, use_branch1=True, stride=2)" in source


def test_conv2d_norm_activation_class_with_optional_activation(torchvision: Any) -> None:  # noqa: ANN401
    torch.manual_seed(0)
    source = _round_trip(torchvision.models.mobilenet_v3_small().eval())
    assert _classes(source) == ["Conv2dNormActivation", "SqueezeExcitation", "InvertedResidual", "MobileNetV3"]
    assert "activation_layer: type[nn.Module] | None = None" in source
    assert "*([activation_layer(inplace=True)] if activation_layer is not None else [])" in source
    assert "Conv2dNormActivation(channels, out_channels)," in source  # the projection: no activation


def test_mobilenet_v2_round_trip(torchvision: Any) -> None:  # noqa: ANN401
    torch.manual_seed(0)
    source = _round_trip(torchvision.models.mobilenet_v2().eval())
    assert _classes(source) == ["Conv2dNormActivation", "InvertedResidual", "MobileNetV2"]


class Named(nn.Sequential):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.act = nn.ReLU()


class Mixed(nn.Sequential):
    """Instances differ in the kind of their second item: no literal argument covers that."""

    def __init__(self, norm: bool) -> None:
        super().__init__(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3) if norm else nn.Dropout(0.0))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Named(4), Named(8)
        self.m1, self.m2 = Mixed(True), Mixed(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).sum(1) + self.b(x).sum(1) + self.m1(x).sum(1) + self.m2(x).sum(1)


def test_named_subclass_one_class_and_mixed_one_falls_back() -> None:
    torch.manual_seed(0)
    source = _round_trip(Net().eval(), size=8)
    assert _classes(source) == ["Named", "Net"]  # Mixed: each instance stays the nn.Sequential it is
    assert "class Named(nn.Sequential):" in source and "self.a = Named(4)" in source
    assert "self.m1 = nn.Sequential(nn.Conv2d(3, 3, kernel_size=1), nn.BatchNorm2d(3))" in source


def test_chain_class_is_recorded_and_serialised() -> None:
    ir_model = torchgraft.capture(Net().eval(), (torch.randn(1, 3, 8, 8),))
    chains = {p: n.cls for p, n in walk(ir_model.root) if isinstance(n, Chain)}
    assert chains["a"] == ClassRef(__name__, "Named") and chains["m1"] == ClassRef(__name__, "Mixed")
    again = from_json(to_json(ir_model))
    assert again.root == ir_model.root
    assert Chain(nn_relu := again.root["a"]["act"], cls=None) != Chain(nn_relu, cls=ClassRef("m", "C"))
    with pytest.raises(torchgraft.errors.IRError, match="cls="):
        Chain(nn_relu, cls="Named")  # type: ignore[arg-type]


class _Reversed(nn.Sequential):
    """Overrides ``__iter__``, which Sequential's forward runs through: not a plain Sequential."""

    def __init__(self, c: int) -> None:
        super().__init__(nn.Linear(c, c), nn.Tanh())

    def __iter__(self) -> Any:  # noqa: ANN401
        return iter(reversed(list(self._modules.values())))


class _Seq(nn.Sequential):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)


class _Act(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(4, 4), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


class _Two(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.a(x), self.b(x)])


@pytest.mark.parametrize("model", [
    _Two(_Reversed(4), _Reversed(4)),
    _Two(_Seq(nn.Linear(4, 4), nn.LeakyReLU(0.2)), _Seq(nn.Linear(4, 4), nn.ELU())),  # kwargs of one class only
    _Two(_Act(nn.LeakyReLU(0.2)), _Act(nn.ELU())),
], ids=["overridden-iter", "seq-leaky-elu", "block-leaky-elu"])
def test_what_one_class_cannot_hold_stays_exact(model: nn.Module) -> None:
    torch.manual_seed(0)
    model = model.eval()
    code = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 4),)))
    rebuilt = code.materialize().eval()
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 4)
            torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-6, atol=1e-6)
    assert "negative_slope=negative_slope" not in code.source  # never passed to ELU

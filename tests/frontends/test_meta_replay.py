"""Capture types every value by replaying the IR on meta tensors; the types equal an eager replay's.

Each model is captured twice: once as users get it (meta replay where possible) and once
with the meta replay switched off (the IR replayed against the real modules). The two
Models must be equal, types included, and the report must say which replay ran.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchgraft
import torchgraft.frontends.capture as capture_mod
from torchgraft.examples.nets import example
from torchgraft.frontends.meta_replay import _stay_on_meta
from torchgraft.ir.types import ScalarType, TensorType, type_of
from torchgraft.ir.verify import verify

from .test_capture import Outer


def eager_capture(model: nn.Module, args: tuple[object, ...], monkeypatch: pytest.MonkeyPatch) -> torchgraft.ir.Model:
    """``capture`` with the meta replay switched off: types come from the real modules."""
    with monkeypatch.context() as m:
        m.setattr(capture_mod, "replay_device", lambda *a: None)
        return torchgraft.capture(model, args)


def _both(model: nn.Module, args: tuple[object, ...], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[torchgraft.ir.Model, torchgraft.ir.Model]:
    fast = torchgraft.capture(model, args)
    return fast, eager_capture(model, args, monkeypatch)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit_b_16", "efficientnet_b0", "swin_t",
                                  "convnext_tiny", "squeezenet1_0", "googlenet"])
def test_meta_replay_types_equal_eager_replay_on_torchvision(torchvision, name: str,  # noqa: ANN001
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    fast, slow = _both(model, (x,), monkeypatch)
    assert fast.report.typing == "meta" and slow.report.typing == "eager"
    verify(fast)
    assert fast == slow  # every module, op, input and output type


def test_meta_replay_keeps_dtypes_and_train_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    net, (x,) = example()
    net = net.double().train()
    fast, slow = _both(net, (x.double(),), monkeypatch)
    assert fast.report.typing == "meta" and fast == slow
    assert fast.output_type == TensorType(("N", 10), "float64")


def test_values_needed_means_an_eager_replay() -> None:
    m = torchgraft.capture(Outer(), (torch.randn(3, 4),))
    assert m.report.typing == "eager"  # the copied source branches on x.sum() > 0
    assert m.output_type == TensorType(("N", 4))


def test_meta_inputs_and_mixed_devices_are_typed_once() -> None:
    net, (x,) = example()
    with torch.device("meta"):
        meta_net, _ = example()
    m = torchgraft.capture(meta_net, (x.to("meta"),))
    assert m.report.typing == "meta" and m.output_type == TensorType(("N", 10), device="meta")
    assert capture_mod.replay_device(net, (x.to("meta"),), {}) is None  # cpu weights, meta input


def test_meta_tensors_are_typed_on_the_device_they_stand_for() -> None:
    value = (torch.empty(2, device="meta"), 3)
    assert type_of(value, None, "cpu") == ScalarType("tuple", (TensorType((2,)), ScalarType("int")))
    assert type_of(value) != type_of(value, None, "cpu")  # without it, meta stays meta


class Moves(nn.Module):
    def __init__(self, to: str) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.to_device = to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.size(1), device=x.device).float()
        return self.lin(x + pos).to(self.to_device).to(torch.float64)


def test_device_moves_to_the_model_device_are_typed_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 4)
    fast, slow = _both(Moves("cpu"), (x,), monkeypatch)
    assert fast.report.typing == "meta" and fast == slow
    assert fast.output_type == TensorType(("N", 4), "float64")
    with pytest.raises(RuntimeError, match="a move to cuda in a model on cpu"):  # so capture replays for real
        _stay_on_meta([torch.empty(1, device="meta"), "cuda:0"], {}, True, "cpu")
    assert _stay_on_meta([], {"device": "cpu", "n": 3}, False, "cpu")[1] == {"device": torch.device("meta"), "n": 3}


def test_transformers_models_are_typed_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_transformers import MODELS

    for name, make in MODELS.items():
        torch.manual_seed(0)
        model, extra = make()
        kwargs = {"input_ids": torch.randint(0, 100, (2, 7)), **extra}
        fast = torchgraft.capture(model.eval(), kwargs=kwargs)
        with monkeypatch.context() as m:
            m.setattr(capture_mod, "replay_device", lambda *a: None)
            slow = torchgraft.capture(model, kwargs=kwargs)
        assert fast.report.typing == "meta", name
        assert fast == slow, name


def test_hooks_on_layers_are_refused_before_any_replay() -> None:
    from torchgraft.errors import CaptureError

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model[0].register_forward_hook(lambda mod, args, out: out.double())
    model[1].register_forward_pre_hook(lambda mod, args: (args[0].unsqueeze(-1),))
    with pytest.raises(CaptureError, match="forward hook"):  # model.py could not run them (docs/faithful.md)
        torchgraft.capture(model, (torch.randn(2, 4),))


class ChannelsLastView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return x.view(x.size(0), -1)


@pytest.mark.parametrize("case", ["channels_last", "mixed_dtype", "bool_sub", "bn_one_value"])
def test_models_that_fail_in_eager_fail_to_capture(case: str) -> None:
    from torchgraft.errors import CaptureError

    x = torch.randn(2, 3, 8, 8)
    if case == "channels_last":  # the view needs the strides the meta kernels keep
        model: nn.Module = ChannelsLastView().to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    elif case == "mixed_dtype":
        model, x = nn.Linear(4, 4), torch.randn(2, 4, dtype=torch.float16)
    elif case == "bool_sub":
        model, x = _BoolSub(), torch.ones(2, 4, dtype=torch.bool)
    else:
        model, x = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train(), torch.randn(1, 4)
    with pytest.raises(Exception):  # noqa: B017 - whatever eager raises
        model(x)
    with pytest.raises(CaptureError):
        torchgraft.capture(model, (x,))


class _BoolSub(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 1

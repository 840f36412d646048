"""Emitted models capture back to the IR they came from, and work with deepcopy, export and compile."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.backends.torch.emitter import import_file
from torchgraft.backends.torch.roundtrip import first_difference, normal_form
from torchgraft.examples.nets import example


def emitted_module(model: nn.Module, x: torch.Tensor, folder: Path) -> tuple[Any, nn.Module]:
    """(IR, emitted model with weights) — saved to ``folder`` so that its source stays readable."""
    ir_model = torchgraft.capture(model, (x,))
    return ir_model, import_file(torchgraft.emit(ir_model).save(folder)).load().eval()


@pytest.fixture(scope="module")
def resnet18(torchvision: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Any, nn.Module]:  # noqa: ANN401
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    ir_model, emitted = emitted_module(model, torch.randn(2, 3, 64, 64), tmp_path_factory.mktemp("resnet18"))
    return model, ir_model, emitted


def test_resnet18_recaptures_to_the_same_ir(resnet18: tuple[nn.Module, Any, nn.Module]) -> None:
    _, ir_model, emitted = resnet18
    again = torchgraft.capture(emitted, (torch.randn(2, 3, 64, 64),))
    assert first_difference(normal_form(ir_model), normal_form(again)) is None


def test_resnet18_deepcopy_and_export(resnet18: tuple[nn.Module, Any, nn.Module]) -> None:
    model, _, emitted = resnet18
    x = torch.randn(2, 3, 64, 64)
    clone = copy.deepcopy(emitted)
    exported = torch.export.export(clone, (x,))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-5)


def test_resnet18_compiles(resnet18: tuple[nn.Module, Any, nn.Module]) -> None:
    model, _, emitted = resnet18
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(copy.deepcopy(emitted), backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_resnet18_train_mode_matches(resnet18: tuple[nn.Module, Any, nn.Module]) -> None:
    """BatchNorm on batch statistics, and the running statistics updated the same way."""
    model, _, emitted = resnet18
    original, rebuilt = copy.deepcopy(model).train(), copy.deepcopy(emitted).train()
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x), original(x), rtol=1e-5, atol=1e-5)
    for (k, a), (_, b) in zip(original.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large", "resnet50"])
def test_generalised_classes_recapture(torchvision: Any, name: str, tmp_path: Path) -> None:  # noqa: ANN401
    """Merged forwards (optional child, conditional tail) and lifted constants capture back exactly."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    ir_model, emitted = emitted_module(torchvision.models.get_model(name).eval(), x, tmp_path)
    assert first_difference(normal_form(ir_model), normal_form(torchgraft.capture(emitted, (x,)))) is None


def test_bundled_net_recaptures_and_re_emits_identically(tmp_path: Path) -> None:
    net, args = example()
    ir_model, emitted = emitted_module(net, args[0], tmp_path)
    again = torchgraft.capture(emitted, args)
    assert first_difference(normal_form(ir_model), normal_form(again)) is None
    first, second = torchgraft.emit(ir_model).source, torchgraft.emit(again).source
    strip = lambda s: "\n".join(ln for ln in s.splitlines() if "From " not in ln and "Emitted by" not in ln)  # noqa: E731
    assert strip(first) == strip(second)

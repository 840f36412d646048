"""``requires_grad=False`` survives capture, passes, the JSON form and emission: build()/load() freeze
exactly the parameters the original froze."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.backends.torch.emitter import import_file
from torchgraft.errors import IRError
from torchgraft.ir import serialize
from torchgraft.ir.model import Model
from torchgraft.ir.primitives import Identity
from torchgraft.passes import run

Flags = dict[str, bool]


class Residual(nn.Module):
    """A block with its own parameter (a Block-owned StateSpec) besides its layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.scale * self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """torchvision-like: conv1/bn1/relu stem, a layer of residual blocks, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Residual(8), Residual(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


FROZEN = ("conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.scale", "layer1.1.conv.weight")


def _frozen_cnn() -> SmallCNN:
    net = SmallCNN().eval()
    for name in FROZEN:
        net.get_parameter(name).requires_grad_(False)
    return net


def _flags(module: nn.Module) -> Flags:
    return {n: p.requires_grad for n, p in module.named_parameters()}


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


def test_capture_records_frozen_parameters_of_leaves_and_blocks() -> None:
    model = torchgraft.capture(_frozen_cnn(), (_x(),))
    assert model.frozen == FROZEN
    residual = model.root.child("layer1").items[0]  # type: ignore[union-attr]
    assert [s.requires_grad for s in residual.state if s.name == "scale"] == [False]


def test_build_load_and_saved_model_py_freeze_exactly_the_original(tmp_path: Path) -> None:
    net = _frozen_cnn()
    code = torchgraft.emit(torchgraft.capture(net, (_x(),)))
    assert "FROZEN = (" in code.source and "requires_grad_(False)" in code.source
    assert code.source.count("class Residual") == 1, "a frozen and a trainable instance share one class"
    assert _flags(code.materialize()) == _flags(net)
    assert _flags(code.materialize(load_weights=False)) == _flags(net)
    assert _flags(code.materialize(load_weights=False, device="meta")) == _flags(net)
    code.save(tmp_path)
    module = import_file(tmp_path / "model.py")
    for built in (module.build(), module.load()):
        assert _flags(built) == _flags(net)
    x = _x()
    torch.testing.assert_close(module.load().eval()(x), net(x))


def test_hand_built_block_state_flag_is_honoured_without_model_frozen() -> None:
    state = (ir.StateSpec("scale", (1,), requires_grad=False), ir.StateSpec("shift", (1,)))
    block = ir.Block(ir.ClassRef("mynet", "Affine"), (("fc", ir.LinearLayer(2, 2)),), ir.ChildRef("fc"), state)
    built = torchgraft.emit(Model("Affine", block)).materialize(load_weights=False)
    assert _flags(built) == {"scale": False, "shift": True, "fc.weight": True, "fc.bias": True}


def test_model_without_frozen_parameters_emits_no_freezing() -> None:
    net = SmallCNN().eval()
    model = torchgraft.capture(net, (_x(),))
    assert model.frozen == ()
    code = torchgraft.emit(model)
    assert "FROZEN" not in code.source
    assert all(_flags(code.materialize()).values())


def test_torchvision_resnet_frozen_stem(torchvision) -> None:  # noqa: ANN001
    net = torchvision.models.resnet18(num_classes=10).eval()
    for p in [*net.conv1.parameters(), *net.bn1.parameters(), *net.layer1[0].parameters()]:
        p.requires_grad_(False)
    emitted = torchgraft.emit(torchgraft.capture(net, (torch.randn(1, 3, 32, 32),))).materialize()
    assert _flags(emitted) == _flags(net)


def test_fuse_conv_bn_keeps_surviving_flags_and_freezes_a_folded_frozen_conv() -> None:
    net = _frozen_cnn()
    fused = run(torchgraft.capture(net, (_x(),)), "fuse-conv-bn").model
    assert "bn1.weight" not in fused.frozen
    emitted = _flags(torchgraft.emit(fused).materialize())
    original = _flags(net)
    assert {k: v for k, v in emitted.items() if k in original} == {k: original[k] for k in emitted if k in original}
    assert emitted["conv1.bias"] is False, "the bias the fold added belongs to a frozen conv"
    assert emitted["layer1.0.conv.bias"] is True and emitted["layer1.1.conv.bias"] is False


def test_renaming_pass_renames_frozen_keys() -> None:
    net = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    net[0][0].weight.requires_grad_(False)
    flat = run(torchgraft.capture(net, (torch.randn(2, 4),)), "flatten-chains").model
    assert flat.frozen == ("0.weight",)
    assert _flags(torchgraft.emit(flat).materialize()) == {"0.weight": False, "0.bias": True, "2.weight": True,
                                                           "2.bias": True}


def test_lora_keeps_a_frozen_layer_frozen_under_its_new_key() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)
    model = run(torchgraft.capture(net, (torch.randn(2, 4),)), "lora{where=0}").model
    flags = _flags(torchgraft.emit(model).materialize())
    assert flags["0.base.weight"] is False and flags["0.base.bias"] is True and flags["0.lora_A.weight"] is True


def test_frozen_keys_round_trip_through_json_and_files(tmp_path: Path) -> None:
    model = torchgraft.capture(_frozen_cnn(), (_x(),))
    assert serialize.from_json(serialize.to_json(model)).frozen == FROZEN
    loaded = serialize.load(serialize.save(model, tmp_path))
    assert loaded == model and loaded.frozen == FROZEN


def test_model_frozen_field_is_checked_and_follows_the_weights() -> None:
    model = Model("M", Identity(), frozen=("a", "b", "a"))
    assert model.frozen == ("a", "b")
    assert model.with_root(Identity(), weights={"b": torch.zeros(1)}).frozen == ("b",)
    for bad in (("",), (1,), "a.weight"):
        with pytest.raises(IRError, match="frozen"):
            Model("M", Identity(), frozen=bad)  # type: ignore[arg-type]

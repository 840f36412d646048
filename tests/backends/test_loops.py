"""Loop re-rolling: runs of a container's item calls are written back as one ``for`` loop.

Each case checks the emitted source (the loop is there, or deliberately not), that the emitted
model equals eager within 1e-6 at the example and at another batch size, and that the original
state_dict loads strict=True with the same keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import torchgraft
from torchgraft.backends.torch.emitter import import_file

TOL = {"rtol": 1e-6, "atol": 1e-6}


class Layer(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) * scale


class TupleLayer(Layer):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        y = torch.relu(self.fc(x)) * scale
        return y, y.sum()


class Stack(nn.Module):
    """``for layer in self.layers: x = layer(x, scale)``, as most transformers write it."""

    def __init__(self, depth: int, cls: type[nn.Module] = Layer) -> None:
        super().__init__()
        self.layers = nn.ModuleList([cls() for _ in range(depth)])
        self.tuple_out = cls is TupleLayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(-1, keepdim=True).sigmoid()
        for layer in self.layers:
            x = layer(x, scale)[0] if self.tuple_out else layer(x, scale)
        return x


class Sliced(nn.Module):
    """The first and last layers are called differently: only the middle is a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer() for _ in range(5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.ones_like(x[:, :1])
        x = self.layers[0](x, scale * 2)
        for layer in self.layers[1:4]:
            x = layer(x, scale)
        return self.layers[4](x, x)


class Mixed(nn.Module):
    """Items of different classes are not a loop (their calls are written one by one)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(), TupleLayer(), Layer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.ones_like(x[:, :1])
        return self.layers[2](self.layers[1](self.layers[0](x, s), s)[0], s)


def _emit(model: nn.Module, tmp: Path) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    model.eval()
    ir_model = torchgraft.capture(model, (torch.randn(2, 8),))
    path = torchgraft.emit(ir_model).save(tmp)
    emitted = import_file(path).build().eval()
    emitted.load_state_dict(model.state_dict(), strict=True)
    assert list(emitted.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        for batch in (2, 5):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(emitted(x), model(x), **TOL)
    return path.read_text(), emitted


def _lines(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip())


def test_modulelist_run_is_one_loop_whatever_the_depth(tmp_path: Path) -> None:
    two, _ = _emit(Stack(2), tmp_path / "two")
    six, _ = _emit(Stack(6), tmp_path / "six")
    assert "for layer in self.layers:\n            x = layer(x, " in six
    assert "self.layers[" not in six
    assert "nn.ModuleList([Layer() for _ in range(6)])" in six
    assert _lines(two) == _lines(six)


def test_calls_taking_an_item_of_the_result_loop_too(tmp_path: Path) -> None:
    source, _ = _emit(Stack(3, TupleLayer), tmp_path)
    assert re.search(r"for layer in self\.layers:\n +x = layer\(x, \w+\)\[0\]", source), source


def test_a_slice_of_the_container_is_a_loop_over_the_slice(tmp_path: Path) -> None:
    source, _ = _emit(Sliced(), tmp_path)
    assert "for layer in self.layers[1:4]:" in source
    assert "self.layers[0](" in source and "self.layers[4](" in source


def test_items_of_different_classes_stay_unrolled(tmp_path: Path) -> None:
    source, _ = _emit(Mixed(), tmp_path)
    assert "for " not in source.split("def forward", 2)[-1].split("def build")[0]


def test_three_calls_in_a_row_and_a_recapture_give_the_same_result(tmp_path: Path) -> None:
    model = Stack(4).eval()
    _, emitted = _emit(model, tmp_path)
    x = torch.randn(3, 8)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(emitted(x), model(x), **TOL)
    again = torchgraft.capture(emitted, (x,))
    assert len([op for op in again.root.body.ops if "layers." in str(op.target)]) == 4  # type: ignore[union-attr]


class DenseLayer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.tanh(self.fc(torch.cat(inputs, 1)))


class DenseBlock(nn.ModuleDict):
    """DenseNet's pattern: each layer reads everything before it; blocks differ in depth."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"layer{i + 1}", DenseLayer(width + 4 * i))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = DenseBlock(2, 8)
        self.block2 = DenseBlock(5, 16)
        self.block3 = DenseBlock(3, 36)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x)))


def test_a_growing_list_is_one_loop_and_blocks_of_any_depth_share_one_class(tmp_path: Path) -> None:
    source, _ = _emit(Dense(), tmp_path)
    assert re.findall(r"^class (\w+)\(", source, re.M) == ["DenseLayer", "DenseBlock", "Dense"]
    block = source.split("class DenseBlock(")[1].split("\nclass ")[0]
    assert "def __init__(self, num_layers: int, in_features: int) -> None:" in block, block
    assert ('for i in range(num_layers):\n            self.add_module(f"layer{i + 1}", '
            "DenseLayer(in_features + 4 * i))") in block
    assert ("features = [x]\n        for layer in self.children():\n            features.append(layer(features))\n"
            "        return torch.cat(features, 1)") in block, block
    assert "DenseBlock(2, 8)" in source and "DenseBlock(5, 16)" in source and "DenseBlock(3, 36)" in source

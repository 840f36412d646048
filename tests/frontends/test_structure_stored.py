"""Structure stored: a captured forward that is only structure is kept as that structure (``ir.stored``).

ResNet's BasicBlock is stored as ``Chain(SkipConnection|Parallel(...), relu)`` over its children; every
consumer still sees every site in it (swap-activation, fuse-conv-bn, remove-dropout, the selector preview),
and the emitted model, reloaded in a fresh process, equals eager. Forwards that do not fit stay Graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from frontends.fresh import reference, run_emitted
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.ir.combine import Combine
from torchgraft.ir.graph import Graph
from torchgraft.ir.nodes import Block, Chain, ChildRef, Parallel, SkipConnection
from torchgraft.ir.primitives import Activation, BatchNorm
from torchgraft.ir.serialize import from_json, to_json
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify
from torchgraft.passes import run, select

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def resnet(torchvision: Any) -> tuple[nn.Module, ir.Model]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    for m in model.modules():  # running statistics that are not the identity, so a fold is visible
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model, torchgraft.capture(model, (torch.randn(2, 3, 64, 64),))


def _basic_blocks(model: ir.Model) -> list[tuple[str, Block]]:
    return [(p, n) for p, n in walk(model.root) if isinstance(n, Block) and n.cls.name == "BasicBlock"]


def test_resnet18_basic_blocks_store_structure(resnet: tuple[nn.Module, ir.Model]) -> None:
    _, captured = resnet
    blocks = _basic_blocks(captured)
    assert len(blocks) == 8
    for path, b in blocks:
        assert isinstance(b.body, Chain) and b.train_body is None, path
        join, act = b.body.items
        assert act == ChildRef("relu")
        assert isinstance(join, SkipConnection if "downsample" not in dict(b.children) else Parallel), path
        inner = join.body if isinstance(join, SkipConnection) else join.branches[0]
        assert isinstance(inner, Chain)
        assert inner.items == tuple(ChildRef(n) for n in ("conv1", "bn1", "relu", "conv2", "bn2"))
    root = captured.root
    assert isinstance(root, Block) and isinstance(root.body, Graph)  # flatten: not structure
    verify(captured)
    assert "| forward: Chain(SkipConnection(add, Chain(conv1, bn1, relu, conv2, bn2)), relu)" in str(captured)


def test_resnet18_round_trip_in_a_fresh_process(resnet: tuple[nn.Module, ir.Model], tmp_path: Path) -> None:
    model, captured = resnet
    code = torchgraft.emit(captured)
    assert "out += identity\n        return self.relu(out)" in code.source  # in place, as written; one class
    assert all(isinstance(b.body.items[0].combine, Combine) and b.body.items[0].combine.in_place  # type: ignore[union-attr]
               for _, b in walk(captured.root) if isinstance(b, Block) and b.cls.name == "BasicBlock")
    assert code.source.count("class BasicBlock(") == 1
    emitted = code.materialize()
    assert list(emitted.state_dict()) == list(model.state_dict())
    emitted.load_state_dict(model.state_dict(), strict=True)
    code.save(tmp_path)
    inputs = {"b2": torch.randn(2, 3, 64, 64), "b3": torch.randn(3, 3, 64, 64)}
    got, _ = run_emitted(tmp_path, inputs, original=model.state_dict())  # build() loads it strict=True there
    expected = reference(model, inputs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **TOL, msg=key)


def test_fuse_conv_bn_folds_structural_bodies(resnet: tuple[nn.Module, ir.Model]) -> None:
    model, captured = resnet
    result = run(captured, "fuse-conv-bn")
    verify(result.model)
    for path, b in _basic_blocks(result.model):
        assert not any(isinstance(c, BatchNorm) for _, c in b.children if not isinstance(c, Chain)), path
        assert "bn1" not in dict(b.children) and "bn2" not in dict(b.children)
        join = b.body.items[0]  # type: ignore[union-attr]
        inner = join.body if isinstance(join, SkipConnection) else join.branches[0]
        assert inner == Chain(ChildRef("conv1"), ChildRef("relu"), ChildRef("conv2"))
    folded = {m.path for m in result.reports[0].matches}
    assert {"layer1.0.conv1", "layer1.0.conv2", "layer2.0.downsample.0", "conv1"} <= folded
    assert not [p for p, n in walk(result.model.root) if isinstance(n, BatchNorm)]
    emitted = torchgraft.emit(result.model).materialize().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), model(x), atol=1e-4, rtol=1e-4)


class Residual(nn.Module):
    """``F.relu(x + act(drop(lin(x))))``: a SkipConnection with a child activation, a dropout and an inline relu."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.act(self.drop(self.lin(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Residual()
        self.b = Residual()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)).flatten(1)


def _net() -> tuple[nn.Module, ir.Model, torch.Tensor]:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 8)
    return net, torchgraft.capture(net, (x,)), x


def test_swap_activation_hits_every_site_of_a_structural_body() -> None:
    net, captured, x = _net()
    body = captured.root.child("a").body  # type: ignore[union-attr]
    assert body == Chain(SkipConnection(Chain(ChildRef("lin"), ChildRef("drop"), ChildRef("act"))),
                         body.items[1])  # type: ignore[union-attr]
    assert isinstance(body.items[1], Activation)  # type: ignore[union-attr]
    assert {s.path for s in select(captured, "kind:ReLU").sites} == {"a.act", "a.relu", "b.act", "b.relu"}
    result = run(captured, "swap-activation{from=relu to=silu}")
    verify(result.model)
    assert {m.path for m in result.reports[0].matches} == {"a.act", "a.relu", "b.act", "b.relu"}
    for name in ("a", "b"):
        block = result.model.root.child(name)  # type: ignore[union-attr]
        assert isinstance(block, Block) and dict(block.children)["act"].kind is ir.ActKind.SILU  # type: ignore[union-attr]
        skip, act = block.body.items  # type: ignore[union-attr]
        assert skip.body.items[-1] == ChildRef("act") and act.kind is ir.ActKind.SILU
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        lin = net.a.lin
        h = F.silu(x + F.silu(lin(x)))
        expected = F.silu(h + F.silu(net.b.lin(h)))
        torch.testing.assert_close(emitted(x), expected, **TOL)


def test_remove_dropout_drops_a_structural_call() -> None:
    net, captured, x = _net()
    result = run(captured, "remove-dropout")
    verify(result.model)
    assert {m.path for m in result.reports[0].matches} == {"a.drop", "b.drop"}
    block = result.model.root.child("a")  # type: ignore[union-attr]
    assert "drop" not in dict(block.children)  # type: ignore[union-attr]
    assert block.body.items[0].body == Chain(ChildRef("lin"), ChildRef("act"))  # type: ignore[union-attr]
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), net(x), **TOL)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + y


class Renamed(nn.Module):
    """Only structure, its input not called ``x``: a caller may pass it by that name, which is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lin(hidden)


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).flatten(1)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.two, self.renamed, self.flat = TwoInputs(), Renamed(), Flat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flat(self.renamed(hidden=self.two(x, x)))


class Positional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Renamed()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden) * 2


class Mixed(nn.Module):
    """Two instances of one class, one called with its input named: both store it (one class is emitted)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Renamed()
        self.keyword = Renamed()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.keyword(hidden=self.inner(hidden))


def test_a_structural_forward_keeps_its_input_name() -> None:
    """``forward(self, hidden)`` stays ``hidden`` (``Block.input_name``): callers may pass it by name."""
    torch.manual_seed(0)
    x = torch.randn(2, 8)
    outer = Positional().eval()
    captured = torchgraft.capture(outer, (x,))
    inner = captured.root.child("inner")  # type: ignore[union-attr]
    assert inner.body == ChildRef("lin") and inner.input_name == "hidden"  # type: ignore[union-attr]
    code = torchgraft.emit(captured)
    assert code.source.count("def forward(self, hidden: Tensor) -> Tensor:") == 2 and "(self, x" not in code.source
    with torch.no_grad():
        torch.testing.assert_close(code.materialize().eval()(hidden=x), outer(hidden=x), **TOL)
    assert from_json(to_json(captured)).root == captured.root

    mixed = Mixed().eval()
    captured = torchgraft.capture(mixed, (x,))
    for name in ("inner", "keyword"):
        assert captured.root.child(name).body == ChildRef("lin"), name  # type: ignore[union-attr]
    code = torchgraft.emit(captured)
    assert code.source.count("class Renamed") == 1 and "self.keyword(hidden=" in code.source
    with torch.no_grad():
        for b in (2, 5):
            x = torch.randn(b, 8)
            torch.testing.assert_close(code.materialize().eval()(x), mixed(x), **TOL)


def test_forwards_that_do_not_fit_keep_their_graph() -> None:
    torch.manual_seed(0)
    outer = Outer().eval()
    x = torch.randn(2, 8)
    captured = torchgraft.capture(outer, (x,))
    for name in ("two", "flat"):
        assert isinstance(captured.root.child(name).body, Graph), name  # type: ignore[union-attr]
    assert captured.root.child("renamed").input_name == "hidden"  # type: ignore[union-attr]  # called by name
    verify(captured)
    emitted = torchgraft.emit(captured).materialize().eval()
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), outer(x), **TOL)

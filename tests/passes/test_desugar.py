"""``desugar`` and ``name-block``: Blocks to structure and back, keys moved and reported, outputs equal.

References are the original eager modules (desugar must not change what the model computes)
and plain torch written out by hand (name-block on a built model).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.hand import build_model
from torchgraft.ir.verify import verify
from torchgraft.passes import PipelineError, run
from torchgraft.passes.name_block import NameBlock

TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


def _same(emitted: nn.Module, original: nn.Module, shape: tuple[int, ...], batches: tuple[int, ...] = (2, 3)) -> None:
    emitted.eval()
    original.eval()
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, *shape[1:])
            torch.testing.assert_close(emitted(x), original(x), **TOL)


@pytest.fixture(scope="module")
def resnet18(torchvision: Any) -> tuple[nn.Module, ir.Model]:
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    return m, torchgraft.capture(m, (torch.randn(2, 3, 64, 64),))


def test_desugar_resnet_blocks_become_structure_and_outputs_stay(resnet18: tuple[nn.Module, ir.Model]) -> None:
    original, captured = resnet18
    result = run(captured, "desugar{where=kind:BasicBlock}")
    verify(result.model)
    report = result.reports[0]
    assert len(report.matches) == 8
    assert not report.skipped
    assert report.keys_renamed["layer1.0.conv1.weight"] == "layer1.0.0.body.conv1.weight"
    assert report.keys_renamed["layer2.0.downsample.0.weight"] == "layer2.0.0.downsample.0.weight"
    assert not report.keys_added and not report.keys_removed
    node = ir.traverse.node_at(result.model.root, "layer1.0")
    assert isinstance(node, ir.Chain) and isinstance(node.items[0], ir.SkipConnection)
    emitted = torchgraft.emit(result.model)
    assert "class BasicBlock" not in emitted.source
    rebuilt = emitted.materialize()
    renamed = {report.keys_renamed.get(k, k) for k in original.state_dict()}
    assert set(rebuilt.state_dict()) == renamed
    _same(rebuilt, original, (2, 3, 64, 64))
    assert captured.root == resnet18[1].root  # the input model is not changed


class Gated(nn.Module):
    """Not structure: it multiplies by a parameter it owns."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


class TwiceFc(nn.Module):
    """Not structure: one child with weights is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


class Branches(nn.Module):
    """Structure: a Parallel of a chain and a layer, then a functional relu."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(self.a(x)) + self.c(x))


def test_desugar_skips_what_is_not_structure_and_says_why() -> None:
    model = nn.Sequential(Gated(), TwiceFc(), Branches())
    captured = torchgraft.capture(model, (torch.randn(3, 4),))
    result = run(captured, "desugar")
    reasons = {s.path: s.reason for s in result.reports[0].skipped}
    assert "owns parameters" in reasons["0"]
    assert "called twice and has state" in reasons["1"]
    assert [m.path for m in result.reports[0].matches] == ["2"]
    verify(result.model)
    rebuilt = torchgraft.emit(result.model).materialize()
    _same(rebuilt, model, (3, 4), batches=(1, 5))
    # Chain(Parallel(Chain(a, b), c), relu): the Parallel is item 0, its first branch the Chain
    assert result.reports[0].keys_renamed == {"2.a.weight": "2.0.0.a.weight", "2.a.bias": "2.0.0.a.bias",
                                              "2.b.weight": "2.0.0.b.weight", "2.b.bias": "2.0.0.b.bias",
                                              "2.c.weight": "2.0.c.weight", "2.c.bias": "2.0.c.bias"}


def _neck() -> ir.Model:
    net = ir.Chain(ir.Conv2d(3, 8, 3, padding=1),
                   ir.SkipConnection(ir.Chain(ir.Conv2d(8, 4, 1), ir.ReLU(), ir.Conv2d(4, 8, 1))),
                   ir.SkipConnection(ir.Chain(ir.Conv2d(8, 4, 1), ir.ReLU(), ir.Conv2d(4, 8, 1))))
    return build_model(net, ir.TensorType(("N", 3, 8, 8)), seed=0)


def test_name_block_wraps_structure_into_one_class() -> None:
    model = _neck()
    result = run(model, "name-block{where=kind:SkipConnection as=Bottleneck}")
    verify(result.model)
    renamed = result.reports[0].keys_renamed
    assert renamed["1.body.0.weight"] == "1.conv2d.weight"
    assert renamed["2.body.2.bias"] == "2.conv2d_2.bias"
    source = torchgraft.emit(result.model).source
    assert source.count("class Bottleneck") == 1
    rebuilt = torchgraft.emit(result.model).materialize().eval()
    w = model.weights

    def conv(x: torch.Tensor, p: str, pad: int = 0) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, w[p + ".weight"], w[p + ".bias"], padding=pad)

    def skip(h: torch.Tensor, p: str) -> torch.Tensor:
        return h + conv(torch.relu(conv(h, p + ".body.0")), p + ".body.2")

    with torch.no_grad():
        for b in (1, 4):
            x = torch.randn(b, 3, 8, 8)
            torch.testing.assert_close(rebuilt(x), skip(skip(conv(x, "0", 1), "1"), "2"), **TOL)


def test_name_block_then_desugar_gives_the_structure_back() -> None:
    model = _neck()
    named = run(model, "name-block{where=kind:SkipConnection as=Bottleneck}").model
    back = run(named, "desugar{where=kind:Bottleneck}").model
    verify(back)
    rebuilt = torchgraft.emit(back).materialize()
    original = torchgraft.emit(model).materialize()
    _same(rebuilt, original, (2, 3, 8, 8))


def test_name_block_refuses_a_bad_class_name() -> None:
    with pytest.raises(PipelineError, match="capital letter"):
        run(_neck(), "name-block{where=1 as=bottle-neck}")
    with pytest.raises(Exception, match="capital letter"):
        NameBlock(as_="lower")


class JustConv(nn.Module):
    """A forward that is one child: the Block becomes that child (torchvision's InvertedResidual without skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("at_root", [False, True])
def test_desugar_a_forward_that_is_one_child(at_root: bool) -> None:
    model = JustConv() if at_root else nn.Sequential(JustConv(), nn.Flatten())
    captured = torchgraft.capture(model.eval(), (torch.randn(2, 3, 6, 6),))
    result = run(captured, "desugar{where=kind:JustConv}")
    verify(result.model)
    expected = {"conv.0.weight": "0.weight"} if at_root else {"0.conv.0.weight": "0.0.weight"}
    assert expected.items() <= result.reports[0].keys_renamed.items()
    _same(torchgraft.emit(result.model).materialize(), model, (2, 3, 6, 6))


def test_desugar_says_what_a_forward_calls() -> None:
    captured = torchgraft.capture(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), (torch.randn(2, 3, 6, 6),))
    resnet_like = torchgraft.capture(JustConvFlat().eval(), (torch.randn(2, 3, 6, 6),))
    skipped = run(resnet_like, "desugar").reports[0].skipped
    assert "its forward calls torch.flatten" in skipped[0].reason
    assert run(captured, "desugar").reports[0].matches == []


class JustConvFlat(JustConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.conv(x), 1)


class Clamp(nn.Module):
    """Writes its input in place before using it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(min=0)
        return self.lin(x)


class LaterFirst(nn.Module):
    """Calls b before a, then joins ``a + b``: the structure must still run b first."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = Clamp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hb = self.b(x)
        ha = self.a(x)
        return ha + hb


class RightNested(nn.Module):
    """``a + (b + c)``: float addition is not associative, so this is not ``(a + b) + c``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + (self.b(x) + self.c(x))


@pytest.mark.parametrize("block", [LaterFirst, RightNested])
def test_desugar_keeps_call_order_and_grouping_exactly(block: type[nn.Module]) -> None:
    model = nn.Sequential(nn.Linear(4, 4), block()).eval()
    captured = torchgraft.capture(model, (torch.randn(3, 4),))
    result = run(captured, "desugar{where=1}")
    assert [m.path for m in result.reports[0].matches] == ["1"]
    rebuilt = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        for b in (2, 5):
            x = torch.randn(b, 4) * 1e3
            assert torch.equal(rebuilt(x), model(x))  # bit for bit: same order of calls and of additions
    node = ir.traverse.node_at(result.model.root, "1")
    if block is RightNested:
        assert isinstance(node, ir.Parallel) and isinstance(node.branches[1], ir.Parallel)
    else:
        assert isinstance(node, ir.Parallel) and node.names == ("b", "a")


class DropThenSubtract(nn.Module):
    """``h = self.drop(x); h -= self.mlp(x)``: in eval, dropout returns x itself, so the ``-=`` writes into
    the caller's tensor. Read as ``Parallel(drop, mlp, combine=sub)`` it would not: not structure."""

    def __init__(self, passthrough: nn.Module) -> None:
        super().__init__()
        self.drop = passthrough
        self.mlp = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(x)
        h -= self.mlp(x)
        return h


class ReadsAfter(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        return self.inner(x) * x  # x is read after the block may have written into it


@pytest.mark.parametrize("passthrough", [nn.Dropout(0.1), nn.Identity()])
def test_an_in_place_join_into_a_passed_through_input_stays_a_forward(passthrough: nn.Module) -> None:
    model = ReadsAfter(DropThenSubtract(passthrough)).eval()
    x = torch.randn(3, 4)
    result = run(torchgraft.capture(model, (x,)), "desugar{where=inner}")
    assert not result.reports[0].matches and result.reports[0].skipped  # said why, not rewritten
    rebuilt = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        for b in (3, 5):
            x = torch.randn(b, 4)
            torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


class BnThenAdd(nn.Module):
    """``out = self.bn(self.conv(x)); out += x``: the batch norm made a new tensor, so ``+=`` is a join."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return out


def test_an_in_place_join_into_a_new_tensor_is_a_skip_connection() -> None:
    model = nn.Sequential(BnThenAdd()).eval()
    result = run(torchgraft.capture(model, (torch.randn(2, 3, 8, 8),)), "desugar")
    assert isinstance(ir.traverse.node_at(result.model.root, "0"), ir.SkipConnection)
    rebuilt = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        x = torch.randn(3, 3, 8, 8)
        torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-5, atol=1e-6)

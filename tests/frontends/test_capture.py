"""Capture: hierarchy, canonical activations, types, errors, opaque modules, no mutation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.examples.nets import example
from torchgraft.ir.verify import verify


def test_bundled_net_structure_and_types() -> None:
    net, args = example()
    m = torchgraft.capture(net, args)
    verify(m)
    assert isinstance(m.root, ir.Block) and m.root.cls.name == "Net"
    stem = m.root.child("stem")
    assert isinstance(stem, ir.Chain) and [type(i).__name__ for i in stem.items] == ["Conv", "BatchNorm", "Activation"]
    blocks = m.root.child("blocks")
    assert isinstance(blocks, ir.Chain) and all(isinstance(b, ir.Block) for b in blocks.items)
    assert m.output_type == ir.TensorType(("N", 10))
    assert m.type_at("stem") == ir.TensorType(("N", 16, 32, 32))
    assert m.inputs[0].type == ir.TensorType(("N", 3, 32, 32))
    assert m.report.methods["blocks.0"] == "fx" and not m.report.opaque


def test_recognises_residual_structure() -> None:
    net, args = example()
    block = torchgraft.capture(net, args).root.child("blocks").items[0]
    view = block.body  # stored as structure at capture (ir.stored)
    assert isinstance(view, ir.Chain)
    skip, act = view.items
    assert isinstance(skip, ir.SkipConnection) and skip.combine.kind is ir.CombineKind.ADD
    assert [c.path for c in skip.body.items] == ["conv1", "bn1", "relu", "conv2", "bn2"]
    assert isinstance(act, ir.Activation) and act.spelling is ir.Spelling.FUNCTIONAL


class Spellings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.lin(x))
        b = torch.relu(a) + a.relu()
        c = F.relu(b, inplace=True)
        d = torch.relu_(c * 2)
        e = F.leaky_relu(d, 0.2) + F.gelu(d, approximate="tanh") + torch.sigmoid(d) + d.tanh()
        return self.act(e)


def test_every_relu_spelling_is_one_primitive() -> None:
    m = torchgraft.capture(Spellings().eval(), (torch.randn(2, 8),))
    prims = [op.target.prim for op in m.root.body.ops if isinstance(op.target, ir.PrimCall)]
    relus = [p for p in prims if p.kind is ir.ActKind.RELU]
    # torch.relu_ is the very function F.relu_ (one object), so both read back as functional in-place
    assert [(p.spelling.value, p.inplace) for p in relus] == [
        ("functional", False), ("torch", False), ("method", False), ("functional", True), ("functional", True)]
    kinds = {p.kind for p in prims}
    assert {ir.ActKind.LEAKY_RELU, ir.ActKind.GELU, ir.ActKind.SIGMOID, ir.ActKind.TANH} <= kinds
    leaky = next(p for p in prims if p.kind is ir.ActKind.LEAKY_RELU)
    assert dict(leaky.options) == {"negative_slope": 0.2}
    x = torch.randn(4, 8)
    out = torchgraft.emit(m).materialize()(x)
    torch.testing.assert_close(out, Spellings.forward(_with_weights(m), x), atol=1e-6, rtol=0)


def _with_weights(m: ir.Model) -> nn.Module:
    ref = Spellings().eval()
    ref.load_state_dict(m.weights)
    return ref


def test_capture_does_not_mutate_the_model_even_in_train_mode() -> None:
    net, args = example()
    net.train()
    before = copy.deepcopy(net.state_dict())
    torchgraft.capture(net, args)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.inner = nn.Sequential(nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.a(x))


def test_model_failing_in_eager_gets_capture_error_with_path() -> None:
    with pytest.raises(torchgraft.CaptureError) as info:
        torchgraft.capture(Broken(), (torch.randn(3, 4),))
    assert info.value.path == "inner.0"
    assert "inner.0 (Linear)" in str(info.value) and "mat1 and mat2" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


class DataDependent(nn.Module):
    def __init__(self, dim: int = 4, scale: float = 2.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x) * self.scale
        return self.lin(x)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.branchy = DataDependent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branchy(self.pre(x))


def test_data_dependent_branch_keeps_both_branches_as_copied_source() -> None:
    model = Outer().eval()
    m = torchgraft.capture(model, (torch.randn(3, 4),))
    node = m.root.child("branchy")
    assert isinstance(node, ir.Block) and isinstance(node.body, ir.PySource)
    assert m.report.methods["branchy"] == "source" and "reads a tensor's value" in m.report.copied["branchy"]
    assert m.report.methods["pre"] == "leaf" and not m.report.opaque
    code = torchgraft.emit(m)
    assert "if x.sum() > 0:" in code.source and "self.scale = 2.0" in code.source
    assert "import" not in code.source.split("class DataDependent")[0].split("from torch import")[1]
    rebuilt = code.materialize()
    for x in (torch.ones(2, 4) * 3, -torch.ones(2, 4) * 3):  # both branches
        torch.testing.assert_close(rebuilt(x), model(x), atol=1e-6, rtol=0)


class Untraceable(nn.Module):
    """Data-dependent, and reads an attribute that is not a constant: only Opaque is left."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.lin = nn.Linear(dim, dim)
        self.table = {"scale": 2.0, "act": lambda v: v}  # a lambda: no source of its own to copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x) * self.table["scale"]
        return self.lin(x)


def test_module_nothing_can_capture_becomes_opaque_and_capture_goes_on() -> None:
    model = nn.Sequential(nn.Linear(4, 4), Untraceable()).eval()
    m = torchgraft.capture(model, (torch.randn(3, 4),))
    node = m.root.items[1]
    assert isinstance(node, ir.Opaque) and "1" in m.report.opaque
    assert "fx could not trace" in node.reason and "copying its source failed" in node.reason
    rebuilt = torchgraft.emit(m).materialize()  # rebuilt from its class: Untraceable(dim=4)
    for x in (torch.ones(2, 4) * 3, -torch.ones(2, 4) * 3):
        torch.testing.assert_close(rebuilt(x), model(x), atol=1e-6, rtol=0)


def test_shared_modules_and_tied_parameters_stay_shared() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Linear(6, 6, bias=False)
            self.again = self.emb
            self.head = nn.Linear(6, 6, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.again(self.emb(x)))

    model = Tied().eval()
    m = torchgraft.capture(model, (torch.randn(2, 6),))
    assert ("again", "emb") in m.ties and ("head.weight", "emb.weight") in m.ties
    rebuilt = torchgraft.emit(m).materialize()
    assert rebuilt.again is rebuilt.emb and rebuilt.head.weight is rebuilt.emb.weight
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(rebuilt(x), model(x), atol=1e-6, rtol=0)


class PaddedConv(nn.Conv2d):
    """A subclass that changes what the layer computes without touching forward."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(F.pad(x, (1, 1, 1, 1)), weight, bias)


class QuietConv(nn.Conv2d):
    def reset_parameters(self) -> None:  # only how it is initialised
        nn.init.constant_(self.weight, 0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


def test_layer_subclass_that_changes_behaviour_is_a_block_not_the_layer() -> None:
    model = nn.Sequential(PaddedConv(3, 4, 3), QuietConv(4, 4, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    m = torchgraft.capture(model, (x,))
    assert isinstance(m.root.items[0], ir.Block) and isinstance(m.root.items[1], ir.Conv)
    assert m.type_at("0") == ir.TensorType(("N", 4, 6, 6))
    torch.testing.assert_close(torchgraft.emit(m).materialize()(x), model(x), rtol=1e-6, atol=1e-6)

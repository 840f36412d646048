"""``ir.aliasing``: which values a forward may write in place unseen, and the structure that recovers.

``result = self.block(x); result = self.stochastic_depth(result); result += x`` (EfficientNet, MobileNet v3,
ConvNeXt-style residuals) is a SkipConnection only because the Sequential ends in a BatchNorm (a new tensor)
and stochastic depth returns its input or ``input * noise``. A block that passes the caller's tensor through,
or returns a view, must keep its forward: desugar would otherwise drop an in-place write the caller sees.
References are the eager modules; outputs are compared bit for bit (same ops in the same order).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.errors import IRError
from torchgraft.ir.aliasing import Fresh, helper_passes, node_fresh
from torchgraft.ir.model import Helper, HelperKind
from torchgraft.ir.serialize import from_json, to_json
from torchgraft.ir.verify import verify
from torchgraft.passes import run

STOCHASTIC = '''
def stochastic_depth(input, p, mode, training=True):
    if p < 0.0 or p > 1.0:
        raise ValueError(p)
    if not training or p == 0.0:
        return input
    noise = torch.empty([input.shape[0]] + [1] * (input.ndim - 1)).bernoulli_(1.0 - p)
    return input * noise
'''


@pytest.mark.parametrize(("source", "passes"), [
    (STOCHASTIC, True),
    ("def f(x):\n    return x.view(-1)\n", False),  # a view of the input
    ("def f(x, y):\n    return y\n", False),  # another argument
    ("def f(x):\n    x = x.clone()\n    return x\n", False),  # the first parameter rebound
    ("def f(x, t):\n    if t:\n        return x * 2\n", False),  # may fall off the end (None)
    ("def f(x):\n    return _CACHE\n", False),  # a global
    ("def f(x):\n    def g():\n        return x\n    return x + 1\n", False),  # nested code: not read
    ("def f(x):\n    return x @ x\n", True),
    ("def f(a, /, b):\n    return b\n", False),  # the first parameter is positional-only
    ("def f(a, /, b):\n    return a * b\n", True),
    ("def f(x, y):\n    x.data = y\n    return x\n", False),  # its data re-pointed
    ("def f(x, y):\n    x.set_(y)\n    return x\n", False),
    ("def f(x, y):\n    try:\n        pass\n    except ValueError as x:\n        pass\n    return x\n", False),
    ("def f(x, y):\n    if (x := y) is None:\n        return y * 2\n    return x\n", False),  # walrus
])
def test_a_helper_passes_its_input_through_only_when_every_return_says_so(source: str, passes: bool) -> None:
    assert helper_passes(Helper("f", source, "tests")) is passes
    assert not helper_passes(Helper("f", source, "tests", HelperKind.CONSTANT))


def test_chains_compose_fresh_and_pass_through() -> None:
    lin, drop, relu_ = ir.Linear(4, 4), ir.Dropout(0.1), ir.ReLU(inplace=True)
    assert node_fresh(ir.Chain(lin, drop, relu_)) is Fresh.NEW  # new, then passed through twice
    assert node_fresh(ir.Chain(drop, relu_)) is Fresh.PASS  # the input itself, possibly
    assert node_fresh(ir.Chain()) is Fresh.PASS
    assert Fresh.NEW.both(Fresh.PASS) is Fresh.PASS and Fresh.NEW.both(Fresh.UNKNOWN) is Fresh.UNKNOWN


class ReturnsInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReturnsView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape)


class Residual(nn.Module):
    """``result = self.block(x); result = self.sd(result); result += x``, as in torchvision's MBConv."""

    def __init__(self, block: nn.Module, sd: nn.Module) -> None:
        super().__init__()
        self.block, self.sd = block, sd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        result = self.sd(result)
        result += x
        return result


class Outer(nn.Module):
    """Reads its tensor after the inner block ran: an in-place write into it would show."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.lin, self.inner = nn.Linear(4, 4), inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        return self.inner(x) * x


def _desugar_and_compare(model: nn.Module, structure: bool) -> None:
    captured = torchgraft.capture(model.eval(), (torch.randn(3, 4),))
    result = run(captured, "desugar{where=inner}")
    verify(result.model)
    assert bool(result.reports[0].matches) is structure, result.reports[0].skipped
    rebuilt = torchgraft.emit(result.model).materialize()
    for mode in (False, True):
        model.train(mode)
        rebuilt.train(mode)
        with torch.no_grad():
            for b in (3, 5):
                x = torch.randn(b, 4)
                torch.manual_seed(1)
                want = model(x)
                torch.manual_seed(1)
                torch.testing.assert_close(rebuilt(x), want, rtol=0, atol=0)


def test_a_block_ending_in_a_new_tensor_then_stochastic_depth_is_a_skip_connection(torchvision: Any) -> None:  # noqa: ANN401
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    _desugar_and_compare(Outer(Residual(block, torchvision.ops.StochasticDepth(0.5, "row"))), structure=True)


@pytest.mark.parametrize("last", [ReturnsInput, ReturnsView])
def test_a_block_that_may_return_the_callers_tensor_keeps_its_forward(last: type[nn.Module]) -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Dropout(0.1), last())
    _desugar_and_compare(Outer(Residual(block, nn.Identity())), structure=False)


def test_efficientnet_blocks_read_as_structure_and_desugar_exactly(torchvision: Any) -> None:  # noqa: ANN401
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0().eval()
    captured = torchgraft.capture(model, (torch.randn(2, 3, 64, 64),))
    result = run(captured, "desugar{where=features.*.*}")
    verify(result.model)
    assert len(result.reports[0].matches) >= 9  # every MBConv with a residual (stochastic depth + add)
    rebuilt = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        for b in (1, 3):
            x = torch.randn(b, 3, 64, 64)
            torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-5, atol=1e-5)


class Caster(nn.Module):
    """Returns float32 whatever it is given: ``out += x`` keeps float32 where ``out + x`` would promote."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.float())


class Residual2(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        out += x
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_in_place_join_stays_in_place_through_capture_and_desugar(dtype: torch.dtype) -> None:
    """Stored as ``SkipConnection(add, in_place=True)`` and emitted as ``out += x``: float64 calls of a model
    captured with float32 still return float32 (the join never promotes), bit for bit."""
    torch.manual_seed(0)
    model = Residual2(Caster()).eval()
    captured = torchgraft.capture(model, (torch.randn(3, 4),))
    for m in (captured, run(captured, "desugar").model):
        verify(m)
        rebuilt = torchgraft.emit(m).materialize().eval()
        x = torch.randn(5, 4, dtype=dtype)
        got, want = rebuilt(x), model(x)
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    stored = captured.root.body
    assert isinstance(stored, ir.SkipConnection) and stored.combine.in_place


def test_in_place_joins_are_add_or_mul_into_a_fresh_value() -> None:
    with pytest.raises(IRError, match="only 'add' and 'mul' join in place"):
        ir.Combine("sub", in_place=True)
    drop = ir.Chain(ir.Dropout(0.1))  # eval dropout returns its input: += would write into the caller's tensor
    bad = ir.Model("M", ir.SkipConnection(drop, ir.Combine("add", in_place=True)))
    with pytest.raises(IRError, match="writes into the result of its body"):
        verify(bad)
    good = ir.SkipConnection(ir.Chain(ir.Linear(4, 4), ir.Dropout(0.1)), ir.Combine("add", in_place=True))
    verify(ir.Model("M", good))
    assert from_json(to_json(ir.Model("M", good))).root == good

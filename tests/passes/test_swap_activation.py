"""``swap-activation``: every site and spelling, in-place kept, options, selectors, errors.

Numerical references never go through torchgraft: the original eager module is run with the
activation's every spelling patched to the new function (``_relu_is``), or the expected
output is written out by hand.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.ir.verify import verify
from torchgraft.passes import Inside, PathGlob, run
from torchgraft.passes.swap_activation import SwapActivation

Fn = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _relu_is(fn: Fn) -> Iterator[None]:
    """Every relu spelling computes ``fn`` (in-place forms write the result into their input).

    ``nn.ReLU`` calls ``F.relu``, so modules are covered too.
    """
    saved = {(F, "relu"): F.relu, (torch, "relu"): torch.relu, (torch, "relu_"): torch.relu_,
             (torch.Tensor, "relu"): torch.Tensor.relu, (torch.Tensor, "relu_"): torch.Tensor.relu_}
    F.relu = lambda x, inplace=False: x.copy_(fn(x)) if inplace else fn(x)  # type: ignore[assignment]
    torch.relu = fn  # type: ignore[assignment]
    torch.relu_ = lambda x: x.copy_(fn(x))  # type: ignore[assignment]
    torch.Tensor.relu = lambda self: fn(self)  # type: ignore[assignment]
    torch.Tensor.relu_ = lambda self: self.copy_(fn(self))  # type: ignore[assignment]
    try:
        yield
    finally:
        for (owner, name), f in saved.items():
            setattr(owner, name, f)


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """``|out - ref| <= rel * max|ref|`` elementwise."""
    torch.testing.assert_close(out, ref, atol=rel * float(ref.abs().max()), rtol=0)


def _swapped(model: torchgraft.ir.Model, pipeline: Any) -> tuple[torchgraft.passes.PassResult, str, nn.Module]:
    result = run(model, pipeline)
    verify(result.model)
    code = torchgraft.emit(result.model)
    return result, code.source, code.materialize().eval()


# --------------------------------------------------------------------------- inception_v3


@pytest.fixture(scope="module")
def inception(torchvision: Any) -> tuple[nn.Module, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, init_weights=False)
    x = torch.randn(1, 3, 96, 96)  # the smallest resolutions (>= 75) run the same code; 96 keeps this fast
    # BatchNorm statistics from one batch, so activations keep their scale through ~100 layers
    # (with the default statistics the output is almost only the classifier's bias)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    aux, net.AuxLogits = net.AuxLogits, None  # too small an input for the aux head; eval never runs it
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 96, 96))
    net.AuxLogits = aux
    net.eval()
    return net, x, torchgraft.capture(net, (x,))


def test_inception_v3_every_basicconv2d_relu_becomes_silu(inception: Any) -> None:
    net, x, model = inception
    basic = {p for p, m in net.named_modules() if type(m).__name__ == "BasicConv2d"}
    assert len(basic) == 96  # 94 in the trunk + 2 in AuxLogits (not run in eval, still rewritten)

    result, source, emitted = _swapped(model, "swap-activation{from=relu to=silu}")
    matches = result.reports[0].matches
    # one functional site (``F.relu(x, inplace=True)``) per BasicConv2d instance, nothing else
    assert len(matches) == len(basic)
    assert {m.path.rsplit(".", 1)[0] for m in matches} == basic
    assert {(m.what, m.spelling) for m in matches} == {("relu in-place", "functional")}
    assert not re.search(r"relu(?!6)", source, re.IGNORECASE), "a relu survived the swap"
    assert re.search(r"F\.silu\(.*, inplace=True\)", source)  # in-place stays in-place

    with torch.no_grad():
        with _relu_is(F.silu):
            ref = net(x)
        out = emitted(x)
    # tolerance: 1e-4 x max|output| (float32, ~100 layers deep)
    _close(out, ref, 1e-4)
    assert (out - net(x)).abs().max() > 1e-3  # the swap did change what the model computes


# --------------------------------------------------------------------------- every spelling


class Spellings(nn.Module):
    """Every way to write relu, in-place forms included."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.act_ip = nn.ReLU(inplace=True)
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.fc(x))
        b = F.relu(x - 0.1)
        c = torch.relu(x + 0.2)
        d = (x * 0.5).relu()
        e = F.relu(x * 1.5, inplace=True)
        f = torch.relu_(x * 2.0)
        g = (x - 0.3).relu_()
        h = self.act_ip(x * 0.7)
        return a + b + c + d + e + f + g + h + self.seq(x)


@pytest.fixture(scope="module")
def spellings() -> tuple[nn.Module, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    net = Spellings().eval()
    x = torch.randn(4, 8)
    return net, x, torchgraft.capture(net, (x,))


@pytest.mark.parametrize("to, fn", [("silu", F.silu), ("gelu", F.gelu), ("tanh", torch.tanh)])
def test_every_spelling_is_swapped(spellings: Any, to: str, fn: Fn) -> None:
    net, x, model = spellings
    result, source, emitted = _swapped(model, f"swap-activation{{from=relu to={to}}}")
    matches = result.reports[0].matches
    assert len(matches) == 9
    assert {m.spelling for m in matches} == {"module", "functional", "torch", "method"}
    assert sum(m.what == "relu in-place" for m in matches) == 4
    assert {m.path for m in matches if m.spelling == "module"} == {"relu", "act_ip", "seq.1"}
    assert not re.search(r"relu_?\(|ReLU", source), "a relu call survived"  # value names may keep "relu"
    with torch.no_grad():
        with _relu_is(fn):
            ref = net(x.clone())
        _close(emitted(x.clone()), ref)


def test_module_names_follow_the_new_activation(spellings: Any) -> None:
    _, _, model = spellings
    _, source, emitted = _swapped(model, "swap-activation{from=relu to=silu}")
    assert "self.silu = nn.SiLU()" in source  # ``self.relu`` renamed: it held only a relu
    assert "self.act_ip = nn.SiLU(inplace=True)" in source  # in-place module stays in-place
    assert isinstance(emitted.seq[1], nn.SiLU)


class InPlace(nn.Module):
    """Relies on in-place mutation: ``x`` and ``y`` are the same tensor after ``relu_``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0
        y = x.relu_()
        return x + y


class InPlaceLater(nn.Module):
    """A read of the mutated tensor after the in-place call must see the new values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0
        y = torch.relu_(x)
        z = x * 2
        return y + z


@pytest.mark.parametrize("to, fn, spelled", [
    ("silu", F.silu, r"F\.silu\((\w+), inplace=True\)"),
    ("gelu", F.gelu, r"(\w+)\.copy_\(F\.gelu\(\1\)\)"),  # F.gelu has no inplace: the emitter writes into x
])
def test_in_place_semantics_kept(to: str, fn: Fn, spelled: str) -> None:
    x = torch.randn(4, 8)
    for cls, factor in ((InPlace, 2.0), (InPlaceLater, 3.0)):
        net = cls()
        model = torchgraft.capture(net, (x,))
        result, source, emitted = _swapped(model, f"swap-activation{{from=relu to={to}}}")
        assert [m.what for m in result.reports[0].matches] == ["relu in-place"]
        assert re.search(spelled, source), source
        # by hand: every read of x after the in-place call sees fn(x)
        _close(emitted(x.clone()), factor * fn(x))
        with _relu_is(fn):
            _close(emitted(x.clone()), net(x.clone()))


class InPlaceModule(nn.Module):
    """``nn.ReLU(inplace=True)`` whose input is read again afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0
        y = self.act(x)
        return x + y


def test_in_place_module_to_silu_kept() -> None:
    x = torch.randn(4, 8)
    model = torchgraft.capture(InPlaceModule(), (x,))
    _, source, emitted = _swapped(model, "swap-activation{from=relu to=silu}")
    assert "nn.SiLU(inplace=True)" in source
    _close(emitted(x.clone()), 2 * F.silu(x))


def test_in_place_module_to_gelu_kept() -> None:
    x = torch.randn(4, 8)
    model = torchgraft.capture(InPlaceModule(), (x,))
    _, source, emitted = _swapped(model, "swap-activation{from=relu to=gelu}")
    assert ".copy_(self.act(" in source  # nn.GELU has no inplace: the call writes back into its input
    _close(emitted(x.clone()), 2 * F.gelu(x))


# --------------------------------------------------------------------------- options


def test_leaky_relu_negative_slope(spellings: Any) -> None:
    net, x, model = spellings
    _, source, emitted = _swapped(model, "swap-activation{from=relu to=leaky_relu negative_slope=0.2}")
    assert "nn.LeakyReLU(negative_slope=0.2)" in source
    assert "nn.LeakyReLU(negative_slope=0.2, inplace=True)" in source
    functional = r"F\.leaky_relu\([^()]*(\([^()]*\))?, negative_slope=0\.2(, inplace=True)?\)"
    assert len(re.findall(functional, source)) == 6  # the six functional sites
    assert "negative_slope=0.01" not in source
    fn = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    with torch.no_grad(), _relu_is(fn):
        ref = net(x.clone())
    _close(emitted(x.clone()), ref)


def test_gelu_approximate_tanh(spellings: Any) -> None:
    net, x, model = spellings
    _, source, emitted = _swapped(model, "swap-activation{from=relu to=gelu approximate=tanh}")
    assert 'nn.GELU(approximate="tanh")' in source
    assert re.search(r'F\.gelu\([^()]*, approximate="tanh"\)', source)
    with torch.no_grad():
        with _relu_is(lambda t: F.gelu(t, approximate="tanh")):
            ref = net(x.clone())
        with _relu_is(F.gelu):
            exact = net(x.clone())
    out = emitted(x.clone())
    _close(out, ref)
    assert (out - exact).abs().max() > 1e-5  # the option changed the numbers


def test_option_the_new_activation_lacks_is_an_error(spellings: Any) -> None:
    _, _, model = spellings
    with pytest.raises(ValueError, match=r"silu has no option.*negative_slope"):
        run(model, "swap-activation{from=relu to=silu negative_slope=0.2}")


@pytest.mark.parametrize("pipeline, bad", [
    ("swap-activation{from=relu to=swish}", "swish"),
    ("swap-activation{from=rectifier to=silu}", "rectifier"),
])
def test_unknown_activation_names_are_a_clear_error(spellings: Any, pipeline: str, bad: str) -> None:
    _, _, model = spellings
    with pytest.raises(ValueError, match=rf"unknown activation '{bad}'; known: relu, .*silu"):
        run(model, pipeline)


# --------------------------------------------------------------------------- where=


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.act(self.fc(x)) - 0.5)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Inner()
        self.b = Inner()
        self.head = nn.Sequential(nn.Linear(6, 6), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(self.a(x)) - 0.1))


def _outer_by_hand(net: Outer, x: torch.Tensor, swapped: set[str]) -> torch.Tensor:
    """Outer's forward with silu at the named sites (``a.act``, ``a.f``, ``root``, ``head``...)."""
    act = lambda site, t: F.silu(t) if site in swapped else F.relu(t)  # noqa: E731

    def inner(name: str, m: Inner, t: torch.Tensor) -> torch.Tensor:
        return act(f"{name}.f", act(f"{name}.act", m.fc(t)) - 0.5)

    h = act("root", inner("b", net.b, inner("a", net.a, x)) - 0.1)
    return act("head", net.head[0](h))


@pytest.fixture(scope="module")
def outer() -> tuple[Outer, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    net = Outer().eval()
    x = torch.randn(5, 6)
    return net, x, torchgraft.capture(net, (x,))


ALL = {"a.act", "a.f", "b.act", "b.f", "root", "head"}


@pytest.mark.parametrize("where, sites, paths", [
    (None, ALL, None),
    ("a.*", {"a.act", "a.f"}, {"a.act", "a.relu"}),
    ("*.act", {"a.act", "b.act"}, {"a.act", "b.act"}),
    ("head.*", {"head"}, {"head.1"}),
    ("in:Inner", {"a.act", "a.f", "b.act", "b.f"}, {"a.act", "a.relu", "b.act", "b.relu"}),
    ("in:Outer", ALL, None),
    ("kind:ReLU", ALL, None),
    ("kind:Conv2d", set(), set()),
    (PathGlob("a.*") | PathGlob("head.*"), {"a.act", "a.f", "head"}, {"a.act", "a.relu", "head.1"}),
    (Inside("Inner") & ~PathGlob("*.act"), {"a.f", "b.f"}, {"a.relu", "b.relu"}),
])
def test_where_restricts_sites(outer: Any, where: Any, sites: set[str], paths: set[str] | None) -> None:
    net, x, model = outer
    result, source, emitted = _swapped(model, [SwapActivation(to="silu", where=where)])
    got = {m.path for m in result.reports[0].matches}
    assert len(result.reports[0].matches) == len(sites)
    if paths is not None:
        assert got == paths
    with torch.no_grad():
        _close(emitted(x), _outer_by_hand(net, x, sites))
        if sites != ALL:
            assert "relu" in source.lower()


def test_where_in_text_pipeline(outer: Any) -> None:
    _, _, model = outer
    result = run(model, "swap-activation{from=relu to=silu where=b.*}")
    assert {m.path for m in result.reports[0].matches} == {"b.act", "b.relu"}

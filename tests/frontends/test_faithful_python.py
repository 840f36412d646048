"""Python in a forward that a trace could bake in silently: sizes read as plain numbers, loops over
sizes, defaults, state kept in Python. Each case is captured on one example and called on others
(and three times in a row): the emitted model equals eager (``assert_close``, rtol 1e-4 / atol 1e-5)
or refuses loudly (ValueError from a guard, TypeError, or a torchgraft error at capture or emit)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.errors import TorchgraftError
from torchgraft.ir.verify import verify

TOL = {"rtol": 1e-4, "atol": 1e-5}


class _Fn(nn.Module):
    """A module whose forward is ``fn(self, x)``, with one Linear and optional layers."""

    def __init__(self, fn: Callable[..., torch.Tensor], width: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(4))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _len_reshape(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    n = len(x)
    return self.lin(x).reshape(n, -1).sum(-1)


def _numel(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    y = self.lin(x)
    return y.sum() / y.numel() + y.sum() / y.shape.numel()


def _sqrt(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    len(x)
    return self.lin(x) / math.sqrt(x.size(-1))


def _half(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    h = int(x.shape[0] / 2)
    return self.lin(x)[:h]


def _range(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.size(1))
    for i in range(x.size(0)):
        out = out + self.lin(x)[i] * (i + 1)
    return out


def _slice(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    for layer in self.layers[: x.size(0)]:
        x = layer(x)
    return x


def _ndim(self: _Fn, x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 2:
        x = x.unsqueeze(0)
    return self.lin(x).sum(0)


CASES: dict[str, tuple[Callable[..., torch.Tensor], list[tuple[int, ...]]]] = {
    "len": (_len_reshape, [(3, 4), (4, 4)]),
    "numel": (_numel, [(3, 4), (1, 4)]),
    "sqrt": (_sqrt, [(3, 4), (5, 4)]),
    "int-of-division": (_half, [(4, 4), (6, 4)]),
    "range-over-size": (_range, [(3, 4), (5, 4)]),
    "slice-by-size": (_slice, [(3, 4), (1, 4)]),
    "ndim-branch": (_ndim, [(3, 4), (2, 3, 4)]),
}


def _faithful_or_loud(model: nn.Module, example: tuple[Any, ...], calls: list[tuple[Any, ...]],
                      repeat: int = 1) -> str:
    """"ok", or "loud: ..." when torchgraft refused at capture, emit or call; fails on a silent difference."""
    reference = copy.deepcopy(model)
    try:
        captured = torchgraft.capture(model, example)
        verify(captured)
        emitted = torchgraft.emit(captured).materialize().train(model.training)
    except TorchgraftError as e:
        return f"loud: {e}"
    for args in [example, *calls]:
        for _ in range(repeat):
            try:
                got = emitted(*args)
            except (ValueError, TypeError) as e:
                return f"loud: {e}"
            torch.testing.assert_close(got, reference(*args), **TOL)
    return "ok"


@pytest.mark.parametrize("name", sorted(CASES))
def test_sizes_read_in_python_are_kept_or_guarded(name: str) -> None:
    fn, shapes = CASES[name]
    torch.manual_seed(0)
    model = _Fn(fn).eval()
    outcome = _faithful_or_loud(model, (torch.randn(2, 4),), [(torch.randn(*s),) for s in shapes])
    assert outcome == "ok" or outcome.startswith("loud"), outcome


class _Temp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
        return (self.lin(x) / t).softmax(-1)


class _TempTraced(_Temp):
    def forward(self, x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
        len(x)  # fx cannot trace len(): the fallback trace runs it, specialising t
        return (self.lin(x) / t).softmax(-1)


def test_a_default_stays_the_originals() -> None:
    x = torch.randn(2, 4)
    model = _Temp().eval()  # fx keeps t an input
    emitted = torchgraft.emit(torchgraft.capture(model, (x, 2.0))).materialize()
    for args in ((x, 2.0), (x,), (x, 0.5)):
        torch.testing.assert_close(emitted(*args), model(*args), **TOL)
    model = _TempTraced().eval()  # not fx-traceable: copied or traced with t guarded, never computed with 2.0
    outcome = _faithful_or_loud(model, (x, 2.0), [(x,), (x, 0.5)])
    assert outcome == "ok" or "t=2.0" in outcome, outcome


class _Reassign(nn.Module):
    def __init__(s) -> None:  # noqa: N805 - the first parameter need not be called self
        super().__init__()
        s.register_buffer("running", torch.zeros(4))

    def forward(s, x: torch.Tensor) -> torch.Tensor:  # noqa: N805
        s.running = 0.9 * s.running + 0.1 * x.mean(0)
        return x - s.running


class _Hist(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hist: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.hist.append(1)
        return x * len(self.hist)


class _Bump(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.bump()


class _Setattr(_Bump):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        setattr(self, "n", self.n + 1)  # noqa: B010
        return x * self.n


class _Stats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stats = {"n": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stats["n"] += 1
        return x * self.stats["n"]


@pytest.mark.parametrize("cls", [_Reassign, _Hist, _Bump, _Setattr, _Stats])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_python_state_is_kept_or_refused_and_the_model_untouched(cls: type[nn.Module], mode: str) -> None:
    model = cls().train(mode == "train")
    before = copy.deepcopy(model)
    buffers = {k: id(v) for k, v in model._buffers.items()}
    outcome = _faithful_or_loud(copy.deepcopy(model), (torch.randn(2, 4),), [(torch.randn(3, 4),)], repeat=3)
    assert outcome == "ok" or outcome.startswith("loud"), outcome
    torchgraft.capture(model, (torch.randn(2, 4),)) if outcome == "ok" else None
    assert {k: id(v) for k, v in model._buffers.items()} == buffers
    for k, v in before.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert {k: v for k, v in vars(model).items() if not k.startswith("_")} == \
        {k: v for k, v in vars(before).items() if not k.startswith("_")}


class _ToF(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32)  # the same tensor for a float32 input, another one for float64
        return y * 2 + x


class _DtypeBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        len(x)
        return x * 2 if x.dtype == torch.float32 else x + 1


class _ListIn(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        len(xs[0])
        out = xs[0]
        for t in xs[1:]:
            out = out + t
        return out


class _TwoCalls(nn.Module):
    class _Child(nn.Module):
        def forward(self, x: torch.Tensor, scale: float, square: bool = False) -> torch.Tensor:
            len(x)
            return (x * x if square else x) * scale

    def __init__(self) -> None:
        super().__init__()
        self.c = self._Child()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x, 2.0) + self.c(x, 3.0, square=True)


@pytest.mark.parametrize(("model", "example", "calls"), [
    (_ToF(), (torch.randn(2, 4),), [(torch.randn(2, 4).double(),)]),
    (_DtypeBranch(), (torch.randn(2, 4),), [(torch.randn(2, 4).double(),)]),
    (_ListIn(), ([torch.randn(2), torch.randn(2)],), [([torch.randn(2)] * 3,)]),
    (_TwoCalls(), (torch.randn(2, 4),), [(torch.randn(3, 4),)]),
], ids=["alias-of-input", "dtype-branch", "list-length", "child-called-twice"])
def test_values_python_sees_are_kept_or_guarded(model: nn.Module, example: tuple[Any, ...],
                                                calls: list[tuple[Any, ...]]) -> None:
    outcome = _faithful_or_loud(model.eval(), example, calls)
    assert outcome == "ok" or outcome.startswith("loud"), outcome
    assert "torchgraft bug" not in outcome


def test_a_child_that_appends_to_its_list_arguments(torchvision: Any) -> None:
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([8, 16], 8, extra_blocks=LastLevelMaxPool()).eval()
    feats = {"p2": torch.randn(1, 8, 16, 16), "p3": torch.randn(1, 16, 8, 8)}
    emitted = torchgraft.emit(torchgraft.capture(fpn, (feats,))).materialize().eval()
    other = {"p2": torch.randn(2, 8, 20, 24), "p3": torch.randn(2, 16, 10, 12)}
    for inputs in (feats, other):
        expected, got = fpn(inputs), emitted(inputs)
        assert list(got) == list(expected) == ["p2", "p3", "pool"]
        torch.testing.assert_close(dict(got), dict(expected), **TOL)


def test_capture_leaves_the_random_state_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    x = torch.randn(2, 4)
    state = torch.get_rng_state()
    torchgraft.capture(model, (x,))
    assert torch.equal(torch.get_rng_state(), state)


class _GradBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        len(x)
        return x * 2 if torch.is_grad_enabled() and x.requires_grad else x + 1


def test_grad_mode_branches_are_kept() -> None:
    model = _GradBranch()
    x = torch.randn(2, 4)
    captured = torchgraft.capture(model, (x,))
    assert captured.report.methods[""] == "source"
    emitted = torchgraft.emit(captured).materialize()
    leaf = torch.randn(2, 4, requires_grad=True)
    torch.testing.assert_close(emitted(leaf), model(leaf), **TOL)
    with torch.no_grad():
        torch.testing.assert_close(emitted(leaf), model(leaf), **TOL)
    torch.testing.assert_close(emitted(x), model(x), **TOL)


class _LastDim(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        len(x)
        return x.reshape(-1, x.shape[-1]).softmax(0) * x.size(-1) + x.shape[-2:].numel()


def test_sizes_counted_from_the_end_stay_so() -> None:
    """``x.shape[-1]`` is emitted ``x.size(-1)``: right for inputs of another rank too."""
    model = _LastDim()
    outcome = _faithful_or_loud(model, (torch.randn(2, 8),), [(torch.randn(3, 6),), (torch.randn(2, 8, 3),)])
    assert outcome == "ok" or outcome.startswith("loud"), outcome


def test_to_fx_refuses_guarded_models_clearly() -> None:
    from torchgraft.backends.fx import to_fx

    captured = torchgraft.capture(_HalfGuarded(), (torch.randn(2, 4),))
    assert captured.report.guards
    with pytest.raises(TorchgraftError, match="guards"):
        to_fx(captured)


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        return x * scale


class _HalfGuarded(_Scale):
    def forward(self, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        len(x)  # traced (its source calls super(), so it cannot be copied): the length is guarded
        return super().forward(x, scale)

"""One trace for instances differing only in values passed straight to a wrapped call (frontends.trace_template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn

import torchgraft
from torchgraft.backends.torch.emitter import import_file
from torchgraft.frontends import capture as capture_mod
from torchgraft.frontends.trace_reuse import TraceCache, passed_key
from torchgraft.frontends.trace_template import passed_attrs, same, values_key


def scaled(x: torch.Tensor, s: float, shifts: Any = (0,)) -> torch.Tensor:
    """Reads its arguments in Python (fx.wrap keeps it one call in a trace)."""
    if isinstance(s, int) and not isinstance(s, bool):
        s = s + 1  # ints and floats compute differently: keys must keep their types apart
    return torch.roll(x * s, list(shifts), [0] * len(shifts))


torch.fx.wrap("scaled")


class Scaled(nn.Module):
    def __init__(self, s: Any, shifts: Any = (0,)) -> None:
        super().__init__()
        self.s, self.shifts = s, shifts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled(x, self.s, shifts=self.shifts)


class Branchy(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = scaled(x, self.s)
        return y if self.s > 0 else -y  # s also drives Python: keyed by value


class Eager(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = scaled(torch.ones(1), self.s)  # no Proxy among its arguments: it runs, its result is baked
        return x * k.item()


class ByMethod(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled(x, self.s) + self._bias()

    def _bias(self) -> float:
        return self.s * 2  # a method reads s too: keyed by value


class Looped(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = scaled(x, self.s)  # a call that may run more than once
        return x


def _run(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, int]:
    """(capture with sharing, capture with every instance traced, fresh traces in the first)."""
    fresh = capture_mod._trace_fresh
    count = [0]

    def counting(*a: Any, **kw: Any) -> Any:
        count[0] += 1
        return fresh(*a, **kw)

    monkeypatch.setattr(capture_mod, "_trace_fresh", counting)
    shared = torchgraft.capture(model, (x,))
    traced = count[0]
    monkeypatch.setattr(TraceCache, "lookup", lambda self, *a: (None, None))
    alone = torchgraft.capture(model, (x,))
    monkeypatch.undo()
    assert shared.root == alone.root and str(shared) == str(alone)
    return shared, alone, traced


def _check_numbers(captured: Any, model: nn.Module, x: torch.Tensor, tmp_path: Path, tol: float = 0.0) -> None:
    emitted = import_file(torchgraft.emit(captured).save(tmp_path)).build().eval()
    emitted.load_state_dict(model.state_dict())
    torch.testing.assert_close(emitted(x), model(x), rtol=tol, atol=tol)  # the same ops on the same values


def test_instances_differing_in_passed_values_share_one_trace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = nn.Sequential(Scaled(0.5, [1]), Scaled(2.0, [2]), Scaled(0.5, [1]), Scaled(-0.0, (1,)),
                          Scaled(0.0, [1]), Scaled(3, [1]), Scaled(True, [1]), Scaled(0.25, [1, 1]))
    x = torch.arange(24.0).reshape(4, 6)
    shared, _, traced = _run(model, x, monkeypatch)
    assert traced == 1  # one trace, every other instance from its template
    bodies = [repr(shared.root.items[i].body) for i in range(8)]
    assert bodies[0] == bodies[2] and len(set(bodies)) == 7
    assert "3" in bodies[5] and "3.0" not in bodies[5] and "True" in bodies[6]  # types kept
    _check_numbers(shared, model, x, tmp_path)


@pytest.mark.parametrize("cls", [Branchy, Eager, ByMethod, Looped])
def test_values_that_reach_python_are_traced_per_value(cls: type[Scaled], monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    model = nn.Sequential(cls(0.5), cls(-2.0), cls(0.5), cls(3.0))
    x = torch.arange(24.0).reshape(4, 6)
    shared, _, traced = _run(model, x, monkeypatch)
    assert traced == 3  # 0.5 twice: the second shares the first's trace; the others are traced
    assert all(shared.root.items[i].method == "fx" for i in range(4))
    _check_numbers(shared, model, x, tmp_path / cls.__name__)


def test_passed_attrs_finds_direct_arguments_of_plain_name_calls() -> None:
    assert {a for a, _ in passed_attrs(Scaled.forward)} == {"s", "shifts"}
    assert dict(passed_attrs(Scaled.forward))["shifts"][0][1] == "shifts"  # a keyword
    assert dict(passed_attrs(Scaled.forward))["s"][0][1] == 1
    assert passed_attrs(Branchy.forward) == ()  # s compared too
    assert passed_attrs(Looped.forward) == ()  # a loop: calls may repeat
    assert {a for a, _ in passed_attrs(ByMethod.forward)} == {"s"}  # the method is checked by passed_key
    found = passed_key(ByMethod(1.0), (), ())
    assert found is not None and found[2] == {}


def test_values_compare_with_their_types() -> None:
    assert not same(1, 1.0) and not same(True, 1) and not same(0.0, -0.0) and not same([1], (1,))
    assert same([1, 2.5], [1, 2.5]) and same(float("nan"), float("nan"))
    assert values_key({"a": 0.0}) != values_key({"a": -0.0}) and values_key({"a": 1}) != values_key({"a": True})


def test_torchvision_stochastic_depth_and_window_attention_share(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo import import_torchvision

    tv = import_torchvision()
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    torch.manual_seed(0)
    model = nn.Sequential(tv.ops.StochasticDepth(0.1, "row"), tv.ops.StochasticDepth(0.2, "batch"),
                          ShiftedWindowAttention(8, [4, 4], [0, 0], 2), ShiftedWindowAttention(8, [4, 4], [2, 2], 4))
    x = torch.randn(2, 8, 8, 8)
    shared, _, traced = _run(model.eval(), x, monkeypatch)
    assert traced == 2  # one per class
    _check_numbers(shared, model, x, tmp_path, 1e-6)  # float32, the same kernels


def test_unaliased_sees_any_module_parameter_or_buffer_held_twice() -> None:
    from torchgraft.frontends.trace_reuse import unaliased

    lin = nn.Linear(2, 2)
    assert unaliased(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2))))
    assert not unaliased(nn.Sequential(lin, nn.Sequential(lin)))  # a module at two places
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    assert not unaliased(tied)  # a parameter at two places
    held = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2))
    held[1].register_buffer("running_mean", held[0].running_mean)
    assert not unaliased(held)  # a buffer at two places
    looped = nn.Sequential(nn.ReLU())
    looped[0].add_module("back", looped)
    assert not unaliased(looped)  # a cycle: met again, and the walk ends
    twice = nn.Linear(2, 2)
    twice.register_parameter("again", twice.weight)
    assert not unaliased(twice)  # one parameter under two names of one module

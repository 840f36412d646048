"""Extra state, ``torch.compile`` wrappers and children used only through other methods (issue 10,
families 3, 4 and 5).

* ``get_extra_state``/``set_extra_state``: the emitted class carries both, copied. A tensor extra
  state travels in ``weights.safetensors``; a JSON value in that file's metadata, which the emitted
  ``load()`` reads; anything else is refused at capture with a CaptureError saying what to return.
* ``torch.compile(model)``: capture takes the module it wraps, compiles nothing, and reports how the
  ``_orig_mod.`` keys map; a compiled submodule keeps its keys.
* A child without ``forward`` whose method the parent calls (fx inlines it): its state keys stay
  ``helper.w``; also a child that has a forward but is called through another method.

Every case: capture -> emit -> save -> reload in a fresh process where torchgraft cannot be
imported -> the original state_dict loads strict=True -> outputs match at the example's batch size
and another.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from frontends.fresh import reference, run_emitted
from torch import nn

import torchgraft
from torchgraft.errors import CaptureError
from torchgraft.ir.nodes import Block, PySource
from torchgraft.ir.verify import verify

TOL = {"rtol": 1e-5, "atol": 1e-5}  # float32, same ops in the same order
INPUTS = {"example": torch.randn(2, 4), "other_batch": torch.randn(5, 4)}


def _round_trip(model: nn.Module, tmp_path: Path, original: dict[str, torch.Tensor] | None = None,
                *, capture_from: nn.Module | None = None) -> tuple[torchgraft.ir.Model, dict[str, object]]:
    """Capture (``capture_from``, default ``model``), emit, save, check in a fresh process against ``model``."""
    captured = torchgraft.capture(capture_from if capture_from is not None else model, (INPUTS["example"],))
    verify(captured)
    code = torchgraft.emit(captured)
    code.save(tmp_path)
    got, extra = run_emitted(tmp_path, INPUTS, original=original)
    for key, value in reference(model, INPUTS).items():
        torch.testing.assert_close(got[key], value, **TOL, msg=key)
    return captured, extra


# -------------------------------------------------------------------------------------------- extra state

class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.steps = 7

    def get_extra_state(self) -> dict[str, object]:
        return {"steps": self.steps, "names": ["a", "b"], "rate": 0.5, "on": True, "none": None}

    def set_extra_state(self, state: dict[str, object]) -> None:
        self.steps = state["steps"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Calibrated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Counter()
        self.head = nn.Linear(4, 3)

    def get_extra_state(self) -> torch.Tensor:
        return torch.arange(3.0) * 2

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.calibration = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x))


def test_extra_state_round_trip(tmp_path: Path) -> None:
    model = Calibrated().eval()
    model.inner.steps = 11  # the state the emitted model must save and load
    captured, extra = _round_trip(model, tmp_path)
    assert captured.extra_state == {"inner._extra_state": model.inner.get_extra_state()}
    assert torch.equal(captured.weights["_extra_state"], torch.arange(3.0) * 2)  # a tensor: with the weights
    assert extra == {"inner._extra_state": model.inner.get_extra_state()}  # read back from the metadata
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "weights.safetensors"))["_extra_state"], torch.arange(3.0) * 2)

    emitted = torchgraft.emit(captured).materialize()
    emitted.load_state_dict(model.state_dict(), strict=True)
    assert emitted.state_dict()["inner._extra_state"]["steps"] == 11
    assert torch.equal(emitted.calibration, torch.arange(3.0) * 2)


class TupleState(Counter):
    def get_extra_state(self) -> dict[str, object]:
        return {"steps": (1, 2)}  # a tuple: JSON would give back a list


def test_extra_state_json_cannot_keep_is_refused() -> None:
    with pytest.raises(CaptureError, match=r"^<root>: get_extra_state returns a dict \(\{'steps': \(1, 2\)\}\).*"
                                           r"make get_extra_state return a tensor, or a JSON value") as info:
        torchgraft.capture(TupleState(), (INPUTS["example"],))
    assert info.value.path == ""


# -------------------------------------------------------------------------------------------- torch.compile

def _frames_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["frames"].values()))


def test_compiled_model_captures_what_it_wraps(tmp_path: Path) -> None:
    inner = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    compiled = torch.compile(inner)
    before = _frames_compiled()
    captured, _ = _round_trip(inner, tmp_path, capture_from=compiled)
    assert _frames_compiled() == before  # nothing was compiled
    note = next(n for n in captured.report.notes if n.startswith("torch.compile"))
    assert "without the '_orig_mod.' prefix" in note and "compiled._orig_mod.state_dict()" in note

    emitted = torchgraft.emit(captured).materialize()
    emitted.load_state_dict(compiled._orig_mod.state_dict(), strict=True)  # the documented ways
    emitted.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in compiled.state_dict().items()},
                            strict=True)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        return self.proj(x) * scale


class WithCompiledPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.compile(Encoder())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


def test_compiled_submodule_keeps_its_keys(tmp_path: Path) -> None:
    model = WithCompiledPart().eval()
    before = _frames_compiled()
    with torch._dynamo.config.patch(disable=True):  # the reference runs eagerly too
        captured, _ = _round_trip(model, tmp_path, original=model.state_dict())
    assert _frames_compiled() == before
    assert "enc._orig_mod.proj.weight" in captured.weights


# -------------------------------------------------------------------------------------------- method-only children

class Scorer(nn.Module):  # no forward: the parent calls score()
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))
        self.proj = nn.Linear(4, 4)
        self.offset = 0.5

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.proj(a) * self.w * b).sum(-1, keepdim=True) + self.offset


class Gate(nn.Module):  # a forward, but the parent calls gate()
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x * self.w)


class UsesMethods(nn.Module):
    def __init__(s) -> None:  # noqa: N805 - the first parameter need not be called self
        super().__init__()
        s.helper = Scorer()
        s.gate = Gate()
        s.l = nn.Linear(4, 4)

    def forward(s, x: torch.Tensor) -> torch.Tensor:  # noqa: N805
        h = s.l(x)
        return s.helper.score(h, x) * s.gate.gate(h)


def test_children_called_through_other_methods(tmp_path: Path) -> None:
    model = UsesMethods().eval()
    captured, _ = _round_trip(model, tmp_path, original=model.state_dict())
    assert captured.report.methods[""] == "fx"
    assert set(captured.weights) == set(model.state_dict())  # helper.w, helper.proj.weight, gate.w, ...
    helper = dict(captured.root.children)["helper"]  # type: ignore[union-attr]
    assert isinstance(helper, Block) and isinstance(helper.body, PySource)
    assert "def score(self, a: torch.Tensor, b: torch.Tensor)" in helper.body.source  # copied, for source parents
    emitted = torchgraft.emit(captured).materialize().eval()
    with pytest.raises(NotImplementedError, match="missing the required \"forward\" function"):
        emitted.helper(INPUTS["example"])  # as the original: it has no forward
    torch.testing.assert_close(emitted.helper.score(INPUTS["example"], INPUTS["example"]),
                               model.helper.score(INPUTS["example"], INPUTS["example"]), **TOL)


class BranchesOnData(nn.Module):  # fx cannot trace it: its source is copied, and calls helper.score
    def __init__(self) -> None:
        super().__init__()
        self.helper = Scorer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.helper.score(x, x)
        return self.helper.score(x, -x)


def test_copied_parent_calls_the_copied_method(tmp_path: Path) -> None:
    model = BranchesOnData().eval()
    captured = torchgraft.capture(model, (torch.ones(2, 4),))
    assert captured.report.methods[""] == "source"
    emitted = torchgraft.emit(captured).materialize().eval()
    emitted.load_state_dict(model.state_dict(), strict=True)
    for x in (torch.ones(2, 4), -torch.ones(3, 4)):
        torch.testing.assert_close(emitted(x), model(x), **TOL)

"""Edges that used to break (issue 11, item 8): deep JSON, deep nn.Sequential nests, the RNG
around capture, and check() on train-mode BatchNorm with a batch of one."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo import run_fresh

import torchgraft
from torchgraft.errors import CheckError, IRError
from torchgraft.ir import serialize

TOL = {"atol": 1e-6, "rtol": 1e-5}


# ---------------------------------------------------------------------------------------------- 1. deep JSON

def _nested_chains(depth: int) -> str:
    inner = '{"node": "Chain", "items": [], "names": []}'
    opening = '{"node": "Chain", "names": ["0"], "items": ['
    return ('{"format": "torchgraft-ir", "version": 1, "model": '
            + opening * depth + inner + "]}" * depth + "}")


@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_json_is_an_ir_error_naming_the_limit(depth: int) -> None:
    with pytest.raises(IRError) as info:
        serialize.from_json(_nested_chains(depth))
    message = str(info.value)
    assert "nested too deeply" in message and str(serialize.MAX_DEPTH) in message


def test_deeply_nested_parsed_document_is_an_ir_error() -> None:
    doc: dict[str, object] = {"node": "Identity"}
    for _ in range(serialize.MAX_DEPTH):
        doc = {"node": "Chain", "names": ["0"], "items": [doc]}
    with pytest.raises(IRError, match="nested too deeply"):
        serialize.from_dict({"format": serialize.FORMAT, "version": serialize.VERSION, "model": doc})


# ---------------------------------------------------------------------------------------------- 2. deep Sequential

def _deep_sequential(depth: int) -> nn.Module:
    model: nn.Module = nn.Linear(4, 4)
    for _ in range(depth):
        model = nn.Sequential(model)
    return model


def _import(path: Path) -> object:
    spec = importlib.util.spec_from_file_location("deep_nest_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_200_deep_sequential_nest_emits_code_python_accepts(tmp_path: Path) -> None:
    model = _deep_sequential(200).eval()
    x, other = torch.randn(2, 4), torch.randn(5, 4)
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    assert "inner_1 = nn.Sequential(" in code.source  # built in parts, innermost first
    code.save(tmp_path)
    rebuilt = _import(tmp_path / "model.py").build().eval()  # type: ignore[attr-defined]
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for inp in (x, other):
            torch.testing.assert_close(rebuilt(inp), model(inp), **TOL)
    outs = run_fresh(tmp_path, {"x": x, "other": other})
    with torch.no_grad():
        torch.testing.assert_close(outs["x"], model(x), **TOL)
        torch.testing.assert_close(outs["other"], model(other), **TOL)


def test_shallow_nests_stay_one_expression() -> None:
    code = torchgraft.emit(torchgraft.capture(_deep_sequential(30), (torch.randn(2, 4),)))
    assert "inner_1" not in code.source


# ---------------------------------------------------------------------------------------------- 3. RNG

class _Noisy(nn.Module):
    """Train-mode randomness of every kind: dropout, BatchNorm statistics, torch.rand in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.rrelu = nn.RReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rrelu(self.drop(self.bn(self.lin(x)))) + torch.rand(1)


def test_capture_in_train_mode_leaves_the_global_rng_alone() -> None:
    model = _Noisy().train()
    x = torch.randn(3, 4)
    state, generator = torch.get_rng_state(), torch.random.default_generator.get_state()
    torchgraft.capture(model, (x,))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.random.default_generator.get_state(), generator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_on_cuda_leaves_the_cuda_rng_alone() -> None:
    model = _Noisy().cuda().train()
    x = torch.randn(3, 4, device="cuda")
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state()
    torchgraft.capture(model, (x,))
    assert torch.equal(torch.get_rng_state(), cpu)
    assert torch.equal(torch.cuda.get_rng_state(), cuda)


# ---------------------------------------------------------------------------------------------- 4. check()

def test_check_says_why_train_mode_batchnorm_cannot_take_a_batch_of_one() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    with pytest.raises(CheckError) as info:
        torchgraft.check(net, copy.deepcopy(net), (torch.randn(1, 4),))
    message = str(info.value)
    assert "'1'" in message and "BatchNorm" in message and "batch > 1" in message and "modes=('eval',)" in message
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_check_on_a_batch_of_one_in_eval_mode_still_compares() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    assert torchgraft.check(net, copy.deepcopy(net), (torch.randn(1, 4),), modes=("eval",)).ok


def test_check_other_value_errors_still_propagate() -> None:
    class Refuses(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("no")

    with pytest.raises(ValueError, match="no") as info:
        torchgraft.check(Refuses(), Refuses(), (torch.randn(1, 4),), modes=("train",))
    assert not isinstance(info.value, CheckError)

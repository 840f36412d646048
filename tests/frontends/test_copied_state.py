"""Copied sources that keep state between methods or read plain attributes of their children (RAFT's
``CorrBlock`` and ``update_block.hidden_state_size``): emitted, reloaded in a fresh process, equal to
eager at the example and at another size."""

from __future__ import annotations

from pathlib import Path

import torch
from family_check import run_calls_fresh
from torch import nn

import torchgraft


class Pyramid(nn.Module):
    """No forward: ``build`` stores a list that ``lookup`` reads (state made at run time)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def build(self, x: torch.Tensor) -> None:
        self.pyramid = [x]
        for _ in range(self.levels - 1):
            self.pyramid.append(nn.functional.avg_pool1d(self.pyramid[-1], 2))

    def lookup(self) -> torch.Tensor:
        return torch.cat([p.mean(-1) for p in self.pyramid], dim=1)


class Update(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = 3
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pyr = Pyramid(3)
        self.update = Update()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:  # a branch on a size: the source is copied
            x = x[..., :-1]
        self.pyr.build(x)
        feats = self.pyr.lookup()
        hidden, rest = torch.split(self.update(feats.repeat(1, 2)[:, :8]), [self.update.hidden_size, 5], dim=1)
        return hidden.tanh() * rest.sum(1, keepdim=True)


def test_runtime_state_and_child_attributes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    calls = [((torch.randn(2, 4, 16),), {}), ((torch.randn(3, 4, 13),), {})]
    ir_model = torchgraft.capture(model, *calls[0])
    assert "pyramid" not in model.pyr.__dict__  # capture's runs left no state behind
    assert ir_model.report.methods[""] == "source"
    code = torchgraft.emit(ir_model)
    assert "self.hidden_size = 3" in code.source
    code.save(tmp_path)
    outs, _ = run_calls_fresh(tmp_path, calls)
    with torch.no_grad():
        for i, (args, _) in enumerate(calls):
            torch.testing.assert_close(outs[f"c{i}"], model(*args), atol=1e-6, rtol=1e-6)

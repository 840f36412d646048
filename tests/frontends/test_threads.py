"""Capture is invisible to other threads: while the main thread captures models (fx traces and
the fallback trace), a second thread runs unrelated models in a loop and must get exactly the
outputs it got before (``assert_close`` with rtol = atol = 0) and no exception, on every call."""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft


class _Stack(nn.Module):
    """Submodules, a parameter and plain attributes read in forward, and a loop over a size."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.scale = nn.Parameter(torch.full((8,), 0.5))
        self.depth = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        for i in range(x.size(0) - 2):
            h = h + self.heads[i % len(self.heads)](h) * self.scale
        for head in self.heads[: self.depth]:
            h = torch.relu(head(h))
        return h.sum(-1) + len(x)


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return (y + self.body(y)).mean((2, 3))


class _Fallback(nn.Module):
    """Input validation: fx cannot trace it, so the fallback trace runs it (``range`` is swapped meanwhile);
    the size branch in its own code then makes capture copy its source."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"expected a 2-d input, got {x.dim()}-d")
        h = self.lin(x)
        for i in range(2):
            h = h * (i + 1)
        return h.reshape(x.size(0), -1).sum(-1)


def _workloads() -> list[tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    return [(seq, torch.randn(4, 5)), (_Stack().eval(), torch.randn(5, 6))]


class _Other(threading.Thread):
    """Runs the workloads until stopped; records every exception and every call made."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.work = _workloads()
        with torch.no_grad():
            self.expected = [m(x) for m, x in self.work]
        self.stop = threading.Event()
        self.calls = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for (model, x), want in zip(self.work, self.expected):
                self.calls += 1
                try:
                    with torch.no_grad():
                        got = model(x)
                    torch.testing.assert_close(got, want, rtol=0, atol=0)
                except BaseException as e:  # noqa: BLE001 - every failure counts, whatever its kind
                    self.errors.append(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")


def _captured_alongside(captures: list[Callable[[], Any]]) -> _Other:
    other = _Other()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the other thread runs inside every trace
    other.start()
    try:
        for run in captures:
            run()
    finally:
        other.stop.set()
        other.join(timeout=60)
        sys.setswitchinterval(interval)
    return other


def _check(other: _Other) -> None:
    assert other.calls > 0
    kinds: dict[str, int] = {}
    for err in other.errors:
        kinds[err.split(":")[0]] = kinds.get(err.split(":")[0], 0) + 1
    assert not other.errors, f"{len(other.errors)} of {other.calls} calls failed {kinds}:\n{other.errors[0]}"


def test_other_thread_runs_normally_while_fx_and_fallback_captures_run() -> None:
    cnn, fallback = _Cnn().eval(), _Fallback().eval()

    def cnn_capture() -> None:
        torchgraft.capture(cnn, (torch.randn(2, 3, 8, 8),))

    def fallback_capture() -> None:
        ir_model = torchgraft.capture(fallback, (torch.randn(3, 4),))
        assert ir_model.report.methods[""] in ("trace", "source"), ir_model.report.methods  # fx refused it

    other = _captured_alongside([cnn_capture, fallback_capture] * 5)
    _check(other)


def test_other_thread_runs_normally_while_tiny_bert_is_captured() -> None:
    from zoo import import_torchvision

    import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    bert = transformers.BertModel(cfg).eval()
    ids = torch.randint(1, 100, (2, 10))

    other = _captured_alongside([lambda: torchgraft.capture(bert, (), {"input_ids": ids})] * 2)
    _check(other)

"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) are primitives: capture -> emit -> fresh-process reload.

Each model is captured once, emitted, and loaded in a new process where ``import torchgraft`` fails; the
original ``state_dict`` loads ``strict=True`` into ``build()``, and every output tensor (the sequence,
``h_n`` and ``c_n``) equals eager within 1e-5 at two batch sizes and two sequence lengths. The state keys
are the layers' own flat-weight names (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``weight_hr_l0``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from zoo import assert_names_defined

import torchgraft
from torchgraft import ir
from torchgraft.errors import IRError

ATOL = 1e-5  # float32; the emitted layers run the same kernels on the same weights

_CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None  # the emitted code must not need torchgraft
import torch
from safetensors.torch import load_file, save_file
folder = sys.argv[1]
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = mod.build()
model.load_state_dict(load_file(folder + "/original.safetensors"), strict=True)
model.eval()
loaded = load_file(folder + "/inputs.safetensors")
def flat(v, key, out):
    if isinstance(v, torch.Tensor):
        out[key] = v.contiguous()
    else:
        for i, x in enumerate(v):
            flat(x, f"{key}.{i}", out)
outs = {}
with torch.no_grad():
    for key, count in json.loads(sys.argv[2]).items():
        flat(model(*[loaded[f"{key}.{i}"] for i in range(count)]), key, outs)
save_file(outs, folder + "/outputs.safetensors")
"""


def _flat(value: Any, key: str, out: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(value, Tensor):
        out[key] = value
    else:
        for i, v in enumerate(value):
            _flat(v, f"{key}.{i}", out)
    return out


def _run_emitted(folder: Path, calls: dict[str, tuple[Tensor, ...]], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Outputs of ``folder/model.py`` (strict-loaded with ``state``) on ``calls``, in a fresh process."""
    from safetensors.torch import load_file, save_file

    save_file({f"{k}.{i}": t.contiguous() for k, args in calls.items() for i, t in enumerate(args)},
              str(folder / "inputs.safetensors"))
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / "original.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    counts = json.dumps({k: len(args) for k, args in calls.items()})
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), counts], capture_output=True, text=True,
                          env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(folder / "outputs.safetensors"))


# ---------------------------------------------------------------------------------------------- models


class Unpacked(nn.Module):
    """``y, (h, c) = self.lstm(x)``; both the sequence and the last hidden state are used."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1)
        self.fc = nn.Linear(16 + 8, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, (h, c) = self.lstm(x)
        return self.fc(torch.cat([y[:, -1], h[-1]], dim=-1)), h, c


class Stack(nn.Module):
    """Sequence-first layers feeding each other, outputs indexed rather than unpacked."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, num_layers=2, bidirectional=True, bias=False)
        self.rnn = nn.RNN(12, 5, nonlinearity="relu")
        self.tanh_rnn = nn.RNN(5, 5, num_layers=3, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.gru(x)
        y, h = self.rnn(out[0])
        z = self.tanh_rnn(y)[0]
        return z, h, out[1]


class Projected(nn.Module):
    """LSTM with ``proj_size`` (``weight_hr_l*`` keys) and a GRU on its output."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, proj_size=3, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(6, 4, batch_first=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, (h, c) = self.lstm(x)
        z, _ = self.gru(y)
        return z, h.sum(0) + c.mean(0).sum(-1, keepdim=True)


class GivenState(nn.Module):
    """Initial states passed in: ``self.lstm(x, (h0, c0))`` and ``self.gru(x, h0)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, (h, c) = self.lstm(x, (h0, c0))
        z, g = self.gru(y, h)
        return z, g, c


def _bf(batch: int, length: int) -> tuple[Tensor, ...]:
    return (torch.randn(batch, length, 4),)


def _sf(batch: int, length: int) -> tuple[Tensor, ...]:
    return (torch.randn(length, batch, 4),)


def _given(batch: int, length: int) -> tuple[Tensor, ...]:
    return torch.randn(batch, length, 4), torch.randn(1, batch, 8), torch.randn(1, batch, 8)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], tuple[Tensor, ...]]]] = {
    "unpacked": (Unpacked, _bf),
    "stack": (Stack, _sf),
    "projected": (Projected, _bf),
    "given_state": (GivenState, _given),
    "bare_lstm": (lambda: nn.LSTM(4, 6, num_layers=2, bidirectional=True), _sf),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recurrent_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    build, make = CASES[name]
    model = build().eval()
    calls = {"a": make(2, 5), "b": make(3, 5), "c": make(2, 9), "d": make(1, 3)}
    with torch.no_grad():
        refs = {k: v for key, args in calls.items() for k, v in _flat(model(*args), key, {}).items()}
    keys_before = list(model.state_dict())

    ir_model = torchgraft.capture(model, calls["a"])
    assert not ir_model.report.opaque, ir_model.report.summary()
    assert any(isinstance(n, ir.Recurrent) for _, n in ir.walk(ir_model.root))
    code = torchgraft.emit(ir_model)
    code.save(tmp_path)
    assert_names_defined(tmp_path / "model.py")
    assert list(code.materialize(load_weights=False, device="meta").state_dict()) == keys_before

    outs = _run_emitted(tmp_path, calls, model.state_dict())
    assert set(outs) == set(refs)
    for key, ref in refs.items():
        torch.testing.assert_close(outs[key], ref, atol=ATOL, rtol=0, msg=key)
    assert list(model.state_dict()) == keys_before  # capture/emit left the model alone


def _code(model: nn.Module, args: tuple[Tensor, ...]) -> str:
    """Emitted source with line breaks inside calls folded away."""
    text = " ".join(torchgraft.emit(torchgraft.capture(model, args)).source.split())
    return text.replace("( ", "(").replace(" )", ")")


def test_emitted_constructor_keeps_every_argument() -> None:
    source = _code(Stack().eval(), _sf(2, 5))
    assert "nn.GRU(4, 6, num_layers=2, bias=False, bidirectional=True)" in source
    assert 'nn.RNN(12, 5, nonlinearity="relu")' in source
    source = _code(Projected().eval(), _bf(2, 5))
    assert "nn.LSTM(4, 8, num_layers=2, batch_first=True, bidirectional=True, proj_size=3)" in source


def test_state_absent_and_given_in_two_examples(tmp_path: Path) -> None:
    """``hx`` optional: one example leaves it out, another passes it; the emitted forward serves both."""

    class Optional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 8, batch_first=True)

        def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return self.gru(x, h)  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model = Optional().eval()
    x, h = torch.randn(2, 5, 4), torch.randn(1, 2, 8)
    ir_model = torchgraft.capture(model, examples=[((x,), None), ((x, h), None)])
    built = torchgraft.emit(ir_model).materialize()
    built.load_state_dict(model.state_dict(), strict=True)
    built.eval()
    x2, h2 = torch.randn(3, 7, 4), torch.randn(1, 3, 8)
    with torch.no_grad():
        for args in ((x2,), (x2, h2)):
            for got, ref in zip(built(*args), model(*args), strict=True):
                torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_passes_and_check_leave_recurrent_layers_alone() -> None:
    """swap-activation does not touch a recurrent layer's own nonlinearity; fuse-conv-bn and
    eliminate-identity pass over them; ``check`` finds the emitted model equal."""

    class WithAct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 8, nonlinearity="relu", batch_first=True)
            self.act = nn.ReLU()
            self.fc = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            y, _ = self.rnn(x)
            return self.fc(self.act(y))

    torch.manual_seed(0)
    model = WithAct().eval()
    x = torch.randn(2, 5, 4)
    ir_model = torchgraft.capture(model, (x,))
    result = torchgraft.passes.run(ir_model, "swap-activation{from=relu to=silu},fuse-conv-bn,eliminate-identity")
    assert [m.path for m in result.reports[0].matches] == ["act"]
    rnn = result.model.root.children[0][1] if isinstance(result.model.root, ir.Block) else None
    assert isinstance(rnn, ir.Recurrent) and rnn.nonlinearity == "relu"
    built = torchgraft.emit(result.model).materialize()
    with torch.no_grad():
        y = model.fc(nn.functional.silu(model.rnn(x)[0]))
        torch.testing.assert_close(built(x), y, atol=ATOL, rtol=0)
    emitted = torchgraft.emit(ir_model).materialize()
    report = torchgraft.check(model, emitted, (x,))
    assert report.ok, report


def test_ir_json_round_trip_keeps_recurrent_arguments() -> None:
    from torchgraft.ir.serialize import from_json, to_json

    ir_model = torchgraft.capture(Stack().eval(), _sf(2, 5))
    assert from_json(to_json(ir_model)).root == ir_model.root
    prim = ir.Recurrent("RNN", 4, 8, num_layers=2, nonlinearity="relu", bias=False, dropout=0.2)
    assert [n for n, _, _ in prim.state()] == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]


@pytest.mark.parametrize("bad", [dict(op="GRU", nonlinearity="relu"), dict(op="GRU", proj_size=2),
                                 dict(op="LSTM", proj_size=8), dict(op="RNN", dropout=1.5)])
def test_invalid_recurrent_arguments_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(IRError):
        ir.Recurrent(**{"input_size": 4, "hidden_size": 8, **bad})


def test_remove_dropout_clears_the_between_layer_dropout() -> None:
    ir_model = torchgraft.capture(Unpacked().eval(), _bf(2, 5))
    result = torchgraft.passes.run(ir_model, "remove-dropout")
    assert [str(m) for m in result.reports[0].matches] == ["lstm (LSTM dropout=0.1, module)"]
    built = torchgraft.emit(result.model).materialize()
    assert built.lstm.dropout == 0.0 and list(built.state_dict()) == list(Unpacked().state_dict())

"""Run one family case end to end: capture -> emit -> save -> ruff-clean -> strict load -> fresh-process reload
-> compare (ruff-clean: ``ruff format --check`` and ``ruff check`` find nothing in model.py, see zoo.py).

``check_case`` returns an ``Outcome`` rather than raising, so the coverage script can tabulate every case;
the sweep test asserts on it. Calls are saved as safetensors plus a JSON layout (tensors, lists of
tensors, dicts, plain constants), so any call signature in ``families.py`` crosses the process boundary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from families import Call, Case
from zoo import ruff_problems

import torchgraft
from torchgraft.errors import TorchgraftError


@dataclass
class Outcome:
    """How far a case got; ``error`` is the first failure (type and message), ``refused`` a clean refusal."""

    case: str
    family: str
    captured: bool = False
    emitted: bool = False
    strict: bool = False
    matches: bool = False
    refused: bool = False
    error: str = ""
    notes: list[str] = field(default_factory=list)


def _layout(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON layout of ``value`` with tensors stored in ``tensors`` under fresh keys."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.contiguous()
        return {"tensor": key}
    if isinstance(value, (list, tuple)):
        return {"list": [_layout(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"dict": {k: _layout(v, f"{key}.{k}", tensors) for k, v in value.items()}}
    return {"value": value}


def flatten(value: Any, prefix: str = "out") -> dict[str, torch.Tensor]:
    """Every tensor in a nested output (tuples, lists, dicts, ``ModelOutput``s) by its path; others skipped."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}"))
    return out


_CHILD = r"""
import importlib.util, json, sys
for name in ("torchgraft", "torchvision", "transformers"):
    sys.modules[name] = None  # the emitted code needs none of them
import torch
from safetensors.torch import load_file, save_file
folder = sys.argv[1]
def rebuild(node, tensors):
    if "tensor" in node: return tensors[node["tensor"]]
    if "list" in node: return [rebuild(v, tensors) for v in node["list"]]
    if "dict" in node: return {k: rebuild(v, tensors) for k, v in node["dict"].items()}
    return node["value"]
def flatten(value, prefix):
    if isinstance(value, torch.Tensor): return {prefix: value}
    items = list(value.items()) if isinstance(value, dict) else []
    if isinstance(value, (list, tuple)): items = list(enumerate(value))
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}"))
    return out
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = mod.load().eval()
tensors = load_file(folder + "/calls.safetensors")
outs = {}
with torch.no_grad():
    for i, call in enumerate(json.load(open(folder + "/calls.json"))):
        args = rebuild(call["args"], tensors); kwargs = rebuild(call["kwargs"], tensors)
        try:
            outs.update({k: v.contiguous() for k, v in flatten(model(*args, **kwargs), f"c{i}").items()})
        except (ValueError, TypeError) as e:
            outs[f"c{i}.refused"] = torch.zeros(0); print(f"call {i} refused: {e}", file=sys.stderr)
save_file(outs, folder + "/outputs.safetensors")
"""


def run_calls_fresh(folder: Path, calls: list[Call]) -> tuple[dict[str, torch.Tensor], str]:
    """Run ``calls`` through ``folder/model.py``'s ``load()`` in a new process where torchgraft cannot be
    imported; returns the flattened outputs (``c{i}.refused`` for a call the model refused) and stderr."""
    from safetensors.torch import load_file, save_file

    tensors: dict[str, torch.Tensor] = {}
    layout = [{"args": _layout(list(a), f"c{i}.a", tensors), "kwargs": _layout(k, f"c{i}.k", tensors)}
              for i, (a, k) in enumerate(calls)]
    save_file(tensors, str(folder / "calls.safetensors"))
    (folder / "calls.json").write_text(json.dumps(layout))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True, env=env,
                          cwd=folder, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"emitted model failed in a fresh process:\n{proc.stderr[-3000:]}")
    return load_file(str(folder / "outputs.safetensors")), proc.stderr


def _references(model: torch.nn.Module, calls: list[Call]) -> dict[str, torch.Tensor]:
    eager = getattr(model, "_orig_mod", model)  # torch.compile: the module it wraps, without compiling
    refs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, (args, kwargs) in enumerate(calls):
            torch.manual_seed(0)
            refs.update(flatten(eager(*args, **kwargs), f"c{i}"))
    return refs


def _compare(outcome: Outcome, outs: dict[str, torch.Tensor], refs: dict[str, torch.Tensor], stderr: str,
             tolerance: float) -> None:
    refused = {k.split(".")[0] for k in outs if k.endswith(".refused")}
    if "c0" in refused:
        outcome.error = f"the emitted model refuses its own capture example: {stderr[-500:]}"
        return
    for call in sorted(refused):
        outcome.notes.append(f"call {call[1:]} refused by a guard")
    refs = {k: v for k, v in refs.items() if k.split(".")[0] not in refused}
    missing = sorted(set(refs) ^ {k for k in outs if not k.endswith(".refused")})
    if missing:
        outcome.error = f"outputs differ in structure: {missing[:6]}"
        return
    for key, ref in refs.items():
        try:
            scale = ref.abs().max().item() if ref.numel() and ref.is_floating_point() else 1.0
            torch.testing.assert_close(outs[key], ref, atol=tolerance * max(scale, 1e-6), rtol=0)
        except AssertionError as e:
            outcome.error = f"output {key} differs: {str(e).splitlines()[-2:]}"
            return
    outcome.matches = True


def check_case(case: Case) -> Outcome:
    """Every step of the round trip for one case, stopping at the first failure."""
    outcome = Outcome(case.name, case.family)
    torch.manual_seed(0)
    try:
        model = case.build().eval()
        calls = case.calls()
        refs = _references(model, calls)
        keys = list(getattr(model, "_orig_mod", model).state_dict())
        state = getattr(model, "_orig_mod", model).state_dict()
    except Exception as e:  # noqa: BLE001 - the eager model itself fails: not torchgraft's outcome
        outcome.error = f"eager model fails: {type(e).__name__}: {str(e)[:300]}"
        return outcome
    args, kwargs = calls[0]
    try:
        ir_model = torchgraft.capture(model, args, kwargs)
        outcome.captured = True
        code = torchgraft.emit(ir_model)
        outcome.emitted = True
    except TorchgraftError as e:
        outcome.refused = True
        outcome.error = f"{type(e).__name__}: {str(e)[:400]}"
        return outcome
    except Exception as e:  # noqa: BLE001 - a raw error escaping capture/emit is a bug the table shows
        outcome.error = f"raw {type(e).__name__}: {str(e)[:300]} @ {traceback.format_exc(limit=-1)[-300:]}"
        return outcome
    with tempfile.TemporaryDirectory(prefix=f"tg-family-{case.name.replace('/', '-')}-") as tmp:
        folder = Path(tmp)
        try:
            code.save(folder)
            unformatted = ruff_problems(folder / "model.py")
            if unformatted:
                outcome.error = f"model.py is not ruff-clean: {unformatted[:400]}"
                return outcome
            try:
                rebuilt = code.materialize(load_weights=False, device="meta")
            except RuntimeError:  # a layer that computes while it is built (orthogonal): build it for real
                rebuilt = code.materialize(load_weights=False)
            rebuilt.load_state_dict(state, strict=True, assign=True)
            outcome.strict = list(rebuilt.state_dict()) == keys
            if not outcome.strict:
                outcome.error = "state_dict keys differ from the original's"
                return outcome
            outs, stderr = run_calls_fresh(folder, calls)
        except Exception as e:  # noqa: BLE001
            outcome.error = f"{type(e).__name__}: {str(e)[-400:]}"
            return outcome
    _compare(outcome, outs, refs, stderr, case.tolerance)
    return outcome

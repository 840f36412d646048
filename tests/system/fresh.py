"""Train emitted ``system.py`` files in a new Python process where ``import torchgraft`` fails.

``train_emitted({"gan": folder, ...}, steps)`` runs, in one child process, for every folder:
``load().setup()`` on the system written there, then ``training_step`` once per batch of
``batches.safetensors`` (each entry stacked along a leading step dimension), and records each
model's loss per step, ``loss(batch 0)`` before and after, and the trained state_dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None  # system.py must not need torchgraft
import torch
from safetensors.torch import load_file, save_file
for folder in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("emitted_system", folder + "/system.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    stacked = load_file(folder + "/batches.safetensors")
    steps = next(iter(stacked.values())).shape[0]
    batches = [{k: v[i] for k, v in stacked.items()} for i in range(steps)]
    torch.manual_seed(0)
    system = mod.load().setup(batches[0])
    before = system.loss(batches[0]).item()
    record = {}
    for step, batch in enumerate(batches):
        for name, value in system.training_step(batch, step).items():
            record.setdefault(name, []).append(float(value))
    after = system.loss(batches[0]).item()
    opt = {n: sorted(k for k, p in system.named_parameters() if any(p is q for g in o.param_groups
                                                                  for q in g["params"]))
           for n, o in system.optimizers.items()}
    result = {"losses": record, "before": before, "after": after, "optimized": opt,
              "requires_grad": sorted(k for k, p in system.named_parameters() if p.requires_grad)}
    open(folder + "/result.json", "w").write(json.dumps(result))
    save_file({k: v.contiguous() for k, v in system.state_dict().items()}, folder + "/trained.safetensors")
"""


def train_emitted(folders: dict[str, Path], batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict]:
    """Per name: the child's result (``losses``, ``before``, ``after``, ``optimized``, ``requires_grad``,
    ``trained``: the state_dict after training)."""
    from safetensors.torch import load_file, save_file

    for name, folder in folders.items():
        save_file({k: v.contiguous() for k, v in batches[name].items()}, str(folder / "batches.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *(str(f) for f in folders.values())],
                          capture_output=True, text=True, env=env, cwd=next(iter(folders.values())))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for name, folder in folders.items():
        out[name] = json.loads((folder / "result.json").read_text())
        out[name]["trained"] = load_file(str(folder / "trained.safetensors"))
    return out

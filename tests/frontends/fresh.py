"""Run an emitted ``model.py`` in a new Python process where ``import torchgraft`` fails.

``run_emitted(folder, inputs)`` loads the model twice there: ``load()`` (the weights file beside it)
and ``build()`` with ``original.safetensors`` loaded ``strict=True`` when the test saved one. It
runs every input through the loaded model in eval mode, then, with ``train=True``, through a fresh
``load()`` in train mode (one call after another, so in-place updates such as spectral norm's
power iteration happen in the same order as in the test's original). Returns the outputs and
the loaded model's state_dict entries that are not tensors (extra states).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None  # the emitted code must not need torchgraft
import torch
from safetensors.torch import load_file, save_file
folder, train = sys.argv[1], sys.argv[2] == "1"
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
inputs = load_file(folder + "/inputs.safetensors")
try:
    original = load_file(folder + "/original.safetensors")
except FileNotFoundError:
    original = None
if original is not None:
    mod.build().load_state_dict(original, strict=True)
model = mod.load().eval()
outs = {}
with torch.no_grad():
    for key, x in inputs.items():
        outs["eval." + key] = model(x)
    if train:
        model = mod.load().train()
        for key, x in inputs.items():
            outs["train." + key] = model(x)
extra = {k: v for k, v in model.state_dict().items() if not isinstance(v, torch.Tensor)}
save_file(outs, folder + "/outputs.safetensors")
(open(folder + "/extra.json", "w")).write(json.dumps(extra))
"""


def run_emitted(folder: Path, inputs: dict[str, torch.Tensor], *, train: bool = False,
                original: dict[str, torch.Tensor] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Outputs (``eval.<key>``, ``train.<key>``) and non-tensor state of the emitted model in ``folder``."""
    from safetensors.torch import load_file, save_file

    save_file({k: v.contiguous() for k, v in inputs.items()}, str(folder / "inputs.safetensors"))
    if original is not None:
        save_file({k: v.detach().contiguous().clone() for k, v in original.items()},
                  str(folder / "original.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), "1" if train else "0"],
                          capture_output=True, text=True, env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(folder / "outputs.safetensors")), json.loads((folder / "extra.json").read_text())


def reference(model: torch.nn.Module, inputs: dict[str, torch.Tensor], *, train: bool = False
              ) -> dict[str, torch.Tensor]:
    """What ``run_emitted`` computes, on the original ``model`` (its state put back afterwards)."""
    saved = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    outs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model.eval()
        outs.update({"eval." + k: model(x) for k, x in inputs.items()})
        if train:
            model.train()
            outs.update({"train." + k: model(x) for k, x in inputs.items()})
            model.eval()
        model.load_state_dict(saved, strict=False)
    return outs

"""Run emitted composable models in one new Python process where ``import torchgraft`` fails.

``save_case(folder, code, cases)`` writes ``model.py``, the weights and ``inputs.safetensors`` (keys
``<case>.<argument>``); ``run_fresh(folders)`` loads each model there with ``load()`` (eval mode),
calls it with every case's arguments by name, and returns ``{folder: {"<case>" or "<case>.<output>":
tensor}}``. ``reference(module, cases)`` computes the same in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from torchgraft.backends.torch.emitter import EmittedCode

Cases = dict[str, dict[str, torch.Tensor]]

CHILD = r"""
import importlib.util, sys
sys.modules["torchgraft"] = None  # the emitted code must not need torchgraft
import torch
from safetensors.torch import load_file, save_file
for i, folder in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"emitted_{i}", folder + "/model.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    model = mod.load().eval()
    inputs = load_file(folder + "/inputs.safetensors")
    cases = {}
    for key, x in inputs.items():
        case, arg = key.split(".")
        cases.setdefault(case, {})[arg] = x
    outs = {}
    with torch.no_grad():
        for case, args in cases.items():
            y = model(**args)
            outs.update({f"{case}.{k}": v for k, v in y.items()} if isinstance(y, dict) else {case: y})
    save_file({k: v.contiguous() for k, v in outs.items()}, folder + "/outputs.safetensors")
"""


def save_case(folder: Path, code: EmittedCode, cases: Cases) -> Path:
    """Save the emitted model and its inputs into ``folder``."""
    code.save(folder)
    save_file({f"{c}.{a}": x.contiguous() for c, args in cases.items() for a, x in args.items()},
              str(folder / "inputs.safetensors"))
    return folder


def reference(module: torch.nn.Module, cases: Cases) -> dict[str, torch.Tensor]:
    """What ``run_fresh`` computes, on ``module`` in this process."""
    outs: dict[str, torch.Tensor] = {}
    module.eval()
    with torch.no_grad():
        for case, args in cases.items():
            y = module(**args)
            outs.update({f"{case}.{k}": v for k, v in y.items()} if isinstance(y, dict) else {case: y})
    return outs


def run_fresh(folders: list[Path]) -> dict[Path, dict[str, torch.Tensor]]:
    """Outputs of the models saved in ``folders``, run in one fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, folders)], capture_output=True, text=True,
                          env=env, cwd=folders[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {f: load_file(str(f / "outputs.safetensors")) for f in folders}

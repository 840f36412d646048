"""The README's main job: capture -> rewrite -> emit -> reload on the bundled model."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from torchgraft.backends.torch.emitter import emit
from torchgraft.examples.nets import example
from torchgraft.frontends.capture import capture

_RELOAD = """
import sys, importlib.util
sys.modules["torchgraft"] = None  # prove the emitted code does not need torchgraft
import torch
spec = importlib.util.spec_from_file_location("emitted", sys.argv[1] + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = mod.load().eval()
x = torch.load(sys.argv[1] + "/input.pt", weights_only=True)
torch.save(model(x).detach(), sys.argv[1] + "/output.pt")
"""


def run(out_dir: str | None = None, show_source: bool = True) -> float:
    """Run the demo; returns the max abs difference between eager and the reloaded emitted model."""
    net, args = example()
    print("1. capture the bundled model (torchgraft.examples.Net)")
    model = capture(net, args)
    print(model.report.summary() if model.report else "")
    rewritten = model
    try:
        from torchgraft.passes import run as run_passes

        print("\n2. rewrite: swap-activation{from=relu to=silu}, fuse-conv-bn")
        result = run_passes(model, "swap-activation{from=relu to=silu},fuse-conv-bn")
        rewritten = result.model
        print(result.report)
    except ImportError:
        print("\n2. rewrite: (no passes available)")
    code = emit(rewritten)
    folder = Path(out_dir or tempfile.mkdtemp(prefix="torchgraft-demo-"))
    code.save(folder)
    print(f"\n3. emitted {folder / 'model.py'} ({len(code.source.splitlines())} lines) + weights.safetensors")
    if show_source:
        print("-" * 72 + "\n" + code.source + "-" * 72)
    torch.save(args[0], folder / "input.pt")
    subprocess.run([sys.executable, "-c", _RELOAD, str(folder)], check=True)
    reloaded = torch.load(folder / "output.pt", weights_only=True)
    reference = _reference(net, args[0], rewritten is not model)
    diff = (reloaded - reference).abs().max().item()
    print(f"4. reloaded in a fresh process (no torchgraft): max |eager - emitted| = {diff:.2e}")
    return diff


def _reference(net: torch.nn.Module, x: torch.Tensor, rewritten: bool) -> torch.Tensor:
    """Eager output of the model the emitted code should equal (SiLU instead of ReLU when rewritten)."""
    import copy

    import torch.nn.functional as F

    ref = copy.deepcopy(net)
    if rewritten:
        for m in list(ref.modules()):
            for child_name, child in list(m.named_children()):
                if isinstance(child, torch.nn.ReLU):
                    setattr(m, child_name, torch.nn.SiLU())
        original_relu = F.relu
        F.relu = F.silu  # the block's functional relu, swapped the way the pass swaps it
        try:
            with torch.no_grad():
                return ref(x)
        finally:
            F.relu = original_relu
    with torch.no_grad():
        return ref(x)

"""torchvision detection models in eval mode (weights=None, box/score threshold 0, one 3x128x128 image).

Their post-processing (anchors, box decoding, NMS, ROI pooling, lists of dicts) is copied as
source with its helper classes and objects (``frontends.helper_classes``/``helper_objects``);
``nms`` and ``roi_align`` become plain-torch stand-ins (``frontends.substitutes``). The emitted
model, in a fresh process without torchgraft, loads the original state_dict strict and equals eager
within 1e-4 x max|output| at the example and at a 2-image call of another size (``family_check``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from families import torchvision_cases
from safetensors.torch import load_file, save_file
from zoo import import_torchvision

import torchgraft

import_torchvision()
CASES = {c.name: c for c in torchvision_cases()}
# every detection model's round trip is a case of tests/test_family_sweep.py (capture once, check all)


_CHILD = r"""
import importlib.util, sys
sys.modules["torchgraft"] = None
sys.modules["torchvision"] = None  # the emitted detection model must not need torchvision
import torch
folder = sys.argv[1]
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = mod.load().eval()
from safetensors.torch import load_file, save_file
x = [load_file(folder + "/x.safetensors")["x"]]
with torch.no_grad():
    out = model(x)
save_file({k: v.contiguous() for k, v in out[0].items()}, folder + "/out.safetensors")
model.train()  # the training path is kept as torchvision wrote it: it asks for targets, as eager does
try:
    model(x)
except AssertionError as e:
    print("train:", e)
"""


def _imported(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


@pytest.mark.slow
def test_fasterrcnn_runs_without_torchvision(tmp_path: Path) -> None:
    case = CASES["fasterrcnn_mobilenet_v3_large_320_fpn"]
    torch.manual_seed(0)
    model = case.build().eval()
    (args, kwargs), _ = case.calls()
    ir_model = torchgraft.capture(model, args, kwargs)
    assert not ir_model.report.opaque, ir_model.report.summary()
    notes = "\n".join(ir_model.report.notes)
    assert "substituted torchvision.ops.boxes.nms" in notes and "torchvision.ops.roi_align.roi_align" in notes
    code = torchgraft.emit(ir_model)
    assert "torchvision" not in _imported(code.source)
    code.save(tmp_path)
    save_file({"x": args[0][0]}, str(tmp_path / "x.safetensors"))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train: targets should not be none when in training mode" in proc.stdout, proc.stdout
    with torch.no_grad():
        refs = model(*args)
    outs = load_file(str(tmp_path / "out.safetensors"))
    assert len(refs) == 1 and set(outs) == set(refs[0])
    for key, ref in refs[0].items():
        torch.testing.assert_close(outs[key], ref, atol=1e-4 * max(ref.abs().max().item(), 1e-6), rtol=0)

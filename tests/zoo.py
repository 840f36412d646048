"""Shared helpers for model-zoo tests: torchvision import on CPU-only torch, fresh-process reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

_DEFINED = False


def import_torchvision() -> Any:
    """Import torchvision on this CPU-only torch build.

    torchvision's compiled ops need CUDA libraries here; it then registers fake kernels
    for ``torchvision::nms``/``qnms``, which were never defined. Defining the two op
    schemas first makes the model zoo importable (see DESIGN.md, environment facts).
    """
    global _DEFINED
    if not _DEFINED and "torchvision" not in sys.modules:
        lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBS.append(lib)
        _DEFINED = True
    import torchvision

    return torchvision


_LIBS: list[Any] = []

INPUT_SIZE = {"inception_v3": 299}


def input_size(name: str) -> int:
    """The usual input resolution of a torchvision classifier."""
    return INPUT_SIZE.get(name, 224)


_CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None  # the emitted code must not need torchgraft
import torch
from safetensors.torch import load_file, save_file
for folder in json.loads(sys.argv[1]):
    spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    model = mod.load().eval()
    outs = {}
    with torch.no_grad():
        for key, x in load_file(folder + "/inputs.safetensors").items():
            y = model(x)
            outs[key] = y if isinstance(y, torch.Tensor) else y[0]
    save_file(outs, folder + "/outputs.safetensors")
    del model, mod
"""


def run_fresh_many(jobs: dict[Path, dict[str, torch.Tensor]]) -> dict[Path, dict[str, torch.Tensor]]:
    """Load each ``folder/model.py`` in one new Python process where ``import torchgraft`` fails,
    run its inputs through ``load()``, and return the outputs per folder."""
    from safetensors.torch import load_file, save_file

    for folder, inputs in jobs.items():
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(folder / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    first = next(iter(jobs))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(f) for f in jobs])],
                          capture_output=True, text=True, env=env, cwd=first)
    if proc.returncode != 0:
        raise AssertionError(f"emitted model failed in a fresh process:\n{proc.stderr[-3000:]}")
    return {folder: load_file(str(folder / "outputs.safetensors")) for folder in jobs}


def run_fresh(folder: Path, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``run_fresh_many`` for one folder."""
    return run_fresh_many({folder: inputs})[folder]


def assert_names_defined(model_py: Any) -> None:
    """``ruff check --select F821,F841`` on an emitted model.py: no undefined name, no unused variable."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        return
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--isolated", "--select", "F821,F841", str(model_py)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


RUFF_FORMAT_CHECK = ("format", "--isolated", "--no-cache", "--check", "--diff")
RUFF_LINT = ("check", "--isolated", "--no-cache", "--select", "E,F,W", "--ignore", "E501")
"""What a user's own checks would say: ruff's defaults (88 columns, double quotes), no config of ours."""


def ruff_problems(*files: Any) -> str:
    """What ``ruff format --check`` and ``ruff check --select E,F,W --ignore E501`` (both ``--isolated``)
    report on emitted files; empty when they are clean. ruff is a dependency of torchgraft."""
    out = []
    for args in (RUFF_FORMAT_CHECK, RUFF_LINT):
        proc = subprocess.run([sys.executable, "-m", "ruff", *args, *map(str, files)], capture_output=True, text=True)
        if proc.returncode != 0:
            out.append(f"ruff {args[0]}: {proc.stdout[-3000:]}{proc.stderr[-1000:]}")
    return "\n".join(out)


def assert_formatted(*files: Any) -> None:
    """``ruff_problems`` finds nothing: the emitted model.py is formatter-stable and lint-clean."""
    problems = ruff_problems(*files)
    assert not problems, problems


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in plain torch (torchvision's kernel semantics: strict ``>``)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def register_reference_nms() -> None:
    """Give ``torchvision::nms`` a plain-torch CPU kernel and let ``torchvision.ops.nms`` call it.

    The torchvision wheel here lacks its compiled ops (``roi_align`` already falls back to plain torch
    without them; ``nms`` does not), so detection models cannot run eagerly without this. Test-only.
    """
    tv = import_torchvision()
    if getattr(register_reference_nms, "done", False):
        return
    lib = torch.library.Library("torchvision", "IMPL", "CPU")  # noqa: TOR901
    lib.impl("nms", _reference_nms)
    _LIBS.append(lib)
    tv.ops.boxes._assert_has_ops = lambda: None
    # roi_align falls back to a lazily torch.compile-d ``_roi_align``, whose float rounding differs from the
    # same Python run eagerly (what model.py runs): with random weights every box scores alike, so that
    # rounding reorders NMS's picks. The reference runs it eagerly too.
    import importlib

    roi = importlib.import_module("torchvision.ops.roi_align")
    roi._roi_align = getattr(roi._roi_align, "__wrapped__", roi._roi_align)
    register_reference_nms.done = True  # type: ignore[attr-defined]

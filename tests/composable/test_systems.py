"""Each model type ``universal`` builds (fan-in, U, straight, fan-out, and the animal-sound model) trains
as an emitted ``System``: ``system.py`` alone, in a fresh process without torchgraft, overfits one
fixed batch in 20 ``training_step`` calls, and its first loss is the eager loss of the built model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import torchgraft as tg
from torchgraft.composable import Input, Output, UniversalModel, universal
from torchgraft.system import System

STEPS = 20
Batch = dict[str, torch.Tensor]

CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None  # system.py must not need torchgraft
import torch
from safetensors.torch import load_file
torch.set_num_threads(1)  # small convolutions: threads only contend
steps = int(sys.argv[1])
for folder in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location("emitted_system", folder + "/system.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    batch = load_file(folder + "/batch.safetensors")
    torch.manual_seed(0)
    system = mod.load().setup(batch)
    losses = [float(system.training_step(batch, step)["net"]) for step in range(steps)]
    open(folder + "/losses.json", "w").write(json.dumps(losses))
"""


def fan_in_loss(m, batch):  # type: ignore[no-untyped-def]
    return F.cross_entropy(m.net(batch["image"]), batch["cls"])


def u_loss(m, batch):  # type: ignore[no-untyped-def]
    return F.binary_cross_entropy_with_logits(m.net(batch["photo"]), batch["mask"])


def straight_loss(m, batch):  # type: ignore[no-untyped-def]
    return F.cross_entropy(m.net(batch["tokens"]), batch["tags"])


def fan_out_loss(m, batch):  # type: ignore[no-untyped-def]
    return F.mse_loss(m.net(batch["z"]), batch["wave"])


def animal_loss(m, batch):  # type: ignore[no-untyped-def]
    return F.mse_loss(m.net(batch["image"], batch["text"], batch["label"]), batch["sound"])


def _batches() -> dict[str, Batch]:
    """One fixed batch per case: inputs and the targets to overfit."""
    g = torch.Generator().manual_seed(3)
    wave = torch.sin(torch.linspace(0, 12, 1024)).expand(4, 1, 1024) * torch.linspace(0.5, 1.5, 4).view(4, 1, 1)
    return {
        "fan-in": {"image": torch.randn(4, 3, 32, 32, generator=g), "cls": torch.tensor([0, 1, 2, 3])},
        "U": {"photo": torch.randn(4, 3, 32, 32, generator=g),
              "mask": (torch.randn(4, 1, 32, 32, generator=g) > 0).float()},
        "straight": {"tokens": torch.randint(0, 20, (4, 6), generator=g),
                     "tags": torch.randint(0, 5, (4, 6), generator=g)},
        "fan-out": {"z": torch.randn(4, 8, generator=g), "wave": wave.contiguous()},
        "animal": {"image": torch.randn(2, 3, 64, 64, generator=g), "text": torch.randint(0, 1000, (2, 5), generator=g),
                   "label": torch.tensor([3, 7]), "sound": torch.sin(torch.linspace(0, 20, 4096)).expand(2, 1, 4096)
                   .contiguous()},
    }


def _models() -> dict[str, tuple[UniversalModel, Callable[..., torch.Tensor], str]]:
    """Per case: the model, its loss, and the plan row whose model type the case is about."""
    image32 = Input(("N", 3, 32, 32), name="image")
    return {
        "fan-in": (universal([image32], [], [Output(("N",), vocab=4, name="cls")]), fan_in_loss, "image"),
        "U": (universal([], [Input(("N", 3, 32, 32), name="photo")], [Output(("N", 1, 32, 32), name="mask")]),
              u_loss, "mask"),
        "straight": (universal([], [Input(("N", "L"), vocab=20, name="tokens")],
                               [Output(("N", "L"), vocab=5, name="tags")]), straight_loss, "tags"),
        "fan-out": (universal([Input(("N", 8), name="z")], [], [Output(("N", 1, 1024), name="wave")]),
                    fan_out_loss, "wave"),
        "animal": (universal([Input(("N", 3, 64, 64), name="image"), Input(("N", "L"), vocab=1000, name="text"),
                              Input(("N",), vocab=10, name="label")], [], [Output(("N", 1, 4096), name="sound")]),
                   animal_loss, "sound"),
    }


@dataclass
class Trained:
    model: UniversalModel
    row: str
    losses: list[float]
    """The losses of 20 ``training_step`` calls of the emitted System, in a fresh process."""
    eager: float
    """The loss of the built model before training, in this process."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    root = tmp_path_factory.mktemp("systems")
    batches, folders, out = _batches(), {}, {}
    for name, (model, loss, row) in _models().items():
        system = System(models={"net": model}, losses={"net": loss}, optimizers={"net": ("Adam", {"lr": 1e-3})},
                        example_batch=batches[name])
        folders[name] = root / name.replace("-", "_")
        tg.emit(system).save(folders[name])
        save_file(batches[name], str(folders[name] / "batch.safetensors"))
        with torch.no_grad():
            eager = float(loss(SimpleNamespace(net=tg.emit(model).materialize().train()), batches[name]))
        out[name] = Trained(model, row, [], eager)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(STEPS), *map(str, folders.values())],
                          capture_output=True, text=True, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, folder in folders.items():
        out[name].losses.extend(json.loads((folder / "losses.json").read_text()))
    return out


@pytest.mark.parametrize("case", ["fan-in", "U", "straight", "fan-out", "animal"])
def test_emitted_system_overfits_one_batch(trained: dict[str, Trained], case: str) -> None:
    t = trained[case]
    assert t.model.plan is not None and t.model.plan.row(t.row).model_type == case.replace("animal", "fan-out")
    assert len(t.losses) == STEPS and all(math.isfinite(v) for v in t.losses)
    torch.testing.assert_close(torch.tensor(t.losses[0]), torch.tensor(t.eager), rtol=1e-4, atol=1e-5)
    first, last = sum(t.losses[:3]) / 3, sum(t.losses[-3:]) / 3
    assert last < 0.9 * first, (case, t.losses)

"""Fine-tuning a captured torchvision resnet18: frozen backbone, LoRA head; only the adapters train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import torchgraft as tg
from tests.zoo import import_torchvision
from torchgraft.system import System

ADAPTERS = ["classifier.fc.lora_A.weight", "classifier.fc.lora_B.weight"]


def classification_loss(m, batch):  # type: ignore[no-untyped-def]
    return F.cross_entropy(m.classifier(batch["image"]), batch["label"])


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "label": torch.randint(0, 10, (n,), generator=g)}


@pytest.fixture(scope="module")
def finetune() -> tuple[System, nn.Module]:
    tv = import_torchvision()
    torch.manual_seed(0)
    net = tv.models.resnet18(num_classes=10)  # random weights
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("fc."))  # the backbone is frozen; the head is not (yet)
    model = tg.capture(net, (torch.randn(2, 3, 32, 32),))
    model = tg.passes.run(model, "lora{where=fc r=4}").model
    system = System(models={"classifier": model}, losses={"classifier": classification_loss},
                    optimizers={"classifier": ("AdamW", {"lr": 1e-2, "weight_decay": 0.0})},
                    trainable="*.lora_*",  # fc.base (the head's own weights) stays as it is
                    example_batch=_batch(2, seed=0))
    return system, net


def test_only_the_adapters_are_optimized(finetune: tuple[System, nn.Module]) -> None:
    system, _ = finetune
    assert system.trainable_parameters() == {"classifier": tuple(ADAPTERS)}
    emitted = tg.emit(system).materialize()
    names = {id(p): k for k, p in emitted.named_parameters()}
    optimizers = emitted.configure_optimizers()
    assert list(optimizers) == ["classifier"]
    assert sorted(names[id(p)] for g in optimizers["classifier"].param_groups for p in g["params"]) == ADAPTERS
    assert sorted(k for k, p in emitted.named_parameters() if p.requires_grad) == ADAPTERS
    assert "FROZEN = (" in tg.emit(system).source and "classifier.fc.base.weight" in tg.emit(system).source


@pytest.mark.parametrize("n", [2, 3])
def test_emitted_loss_equals_the_original_network(finetune: tuple[System, nn.Module], n: int) -> None:
    system, net = finetune
    emitted = tg.emit(system).materialize().eval()
    batch = _batch(n, seed=10 + n)
    with torch.no_grad():
        want = F.cross_entropy(net.eval()(batch["image"]), batch["label"])  # lora_B is zero: same outputs
        assert_close(emitted.losses(batch)["classifier"], want, rtol=1e-5, atol=1e-6)


def test_training_changes_only_the_adapters(finetune: tuple[System, nn.Module]) -> None:
    system, _ = finetune
    emitted = tg.emit(system).materialize()
    batch = _batch(4, seed=3)
    before = {k: v.clone() for k, v in emitted.named_parameters()}
    emitted.setup(batch)
    losses = [float(emitted.training_step(batch, step)["classifier"]) for step in range(6)]
    assert sum(losses[-2:]) < sum(losses[:2])
    changed = sorted(k for k, p in emitted.named_parameters() if not torch.equal(p, before[k]))
    assert changed == ADAPTERS

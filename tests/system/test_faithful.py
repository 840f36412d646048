"""system.py does what the hand-written loop does: each model's step computes only its own loss (BatchNorm
statistics and dropout draws as in the eager loop), a model without a loss stays in eval mode, the file
imports torch whatever the losses call, and the losses' guards speak of the System."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import torchgraft as tg
from tests.system.fresh import train_emitted
from torchgraft.system import System

STEPS = 5
TOL = {"rtol": 1e-5, "atol": 1e-6}


def g_loss(m, b):  # type: ignore[no-untyped-def]
    logits = m.discriminator(m.generator(b["z"]))
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def d_loss(m, b):  # type: ignore[no-untyped-def]
    real = m.discriminator(b["x"])
    fake = m.discriminator(m.generator(b["z"]).detach())
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def _gan_modules() -> dict[str, nn.Module]:
    torch.manual_seed(7)
    return {"generator": nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                                       nn.Linear(32, 16)),
            "discriminator": nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.2),
                                           nn.Dropout(0.3), nn.Linear(32, 1))}


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"z": torch.randn(6, 8, generator=g), "x": torch.randn(6, 16, generator=g) + 1.0}


def _eager(originals: dict[str, nn.Module], system: System) -> dict[str, nn.Module]:
    """Plain-torch copies of the models, with the captured weights and buffers."""
    out = {}
    for name, module in originals.items():
        out[name] = copy.deepcopy(module)
        out[name].load_state_dict(dict(system.models[name].weights), strict=True)
    return out


def _state(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in modules.items() for k, v in m.state_dict().items()}


def test_training_step_equals_the_eager_loop_with_batchnorm_and_dropout() -> None:
    originals = _gan_modules()
    models = {n: tg.capture(copy.deepcopy(m), (torch.randn(4, 8 if n == "generator" else 16),))
              for n, m in originals.items()}
    system = System(models=models, losses={"generator": g_loss, "discriminator": d_loss},
                    optimizers={"generator": ("Adam", {"lr": 1e-2}), "discriminator": ("Adam", {"lr": 1e-2})},
                    example_batch=_batch(0))
    batches = [_batch(10 + i) for i in range(STEPS)]

    m = _eager(originals, system)  # the loop a user writes
    ns = type("Models", (), dict(m))
    opts = {n: torch.optim.Adam(m[n].parameters(), lr=1e-2) for n in system.losses}
    want: list[tuple[dict[str, float], dict[str, torch.Tensor]]] = []
    torch.manual_seed(0)
    for batch in batches:
        losses = {}
        for name, fn in system.losses.items():
            loss = fn(ns, batch)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            losses[name] = loss.detach()
        want.append((losses, _state(m)))

    emitted = tg.emit(system).materialize()
    assert set(emitted.state_dict()) == set(want[0][1])
    torch.manual_seed(0)
    emitted.setup()
    for step, (batch, (losses, state)) in enumerate(zip(batches, want)):
        got = emitted.training_step(batch, step)
        assert list(got) == ["generator", "discriminator"]
        for name in losses:
            assert_close(got[name], losses[name], **TOL)
        for key, value in emitted.state_dict().items():  # parameters and buffers, num_batches_tracked too
            assert_close(value, state[key], **TOL, msg=f"step {step}: {key}")
    assert int(emitted.generator[1].num_batches_tracked) == 2 * STEPS  # once in each loss, not once per loss
    assert int(emitted.discriminator[1].num_batches_tracked) == 3 * STEPS


def _teacher_system() -> tuple[System, nn.Module, nn.Module]:
    torch.manual_seed(3)
    student = nn.Linear(4, 2)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    with torch.no_grad():  # running statistics that differ from a batch's own
        teacher[1].running_mean.uniform_(-1, 1)
        teacher[1].running_var.uniform_(0.5, 2)

    def distill(m, b):  # type: ignore[no-untyped-def]
        return F.mse_loss(m.student(b["x"]), m.teacher(b["x"]))

    x = torch.randn(5, 4)
    system = System(models={"student": tg.capture(copy.deepcopy(student), (x,)),
                            "teacher": tg.capture(copy.deepcopy(teacher), (x,))},
                    losses={"student": distill}, optimizers={"student": ("SGD", {"lr": 0.1})},
                    example_batch={"x": x})
    return system, student, teacher


def test_a_teacher_without_a_loss_stays_in_eval_mode() -> None:
    system, student, teacher = _teacher_system()
    emitted = tg.emit(system).materialize()
    teacher_before = {k: v.clone() for k, v in emitted.teacher.state_dict().items()}
    emitted.setup()
    assert emitted.student.training and not emitted.teacher.training
    assert not any(m.training for m in emitted.teacher.modules())
    emitted.train()  # the System's own train() keeps it so
    assert emitted.student.training and not emitted.teacher.training

    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher).eval()  # the eager loop: teacher.eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for step in range(3):
        x = torch.randn(7, 4, generator=torch.Generator().manual_seed(step))
        want = F.mse_loss(student(x), teacher(x))  # eval-mode teacher: running statistics, no dropout
        opt.zero_grad()
        want.backward()
        opt.step()
        assert_close(emitted.training_step({"x": x}, step)["student"], want.detach(), **TOL)
    for key, value in emitted.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # bit-identical: running stats, num_batches_tracked
    assert_close(emitted.student.weight, student.weight, **TOL)

    fresh = tg.emit(system).materialize()  # training_step without setup() readies the system itself
    fresh.training_step({"x": torch.randn(3, 4)}, 0)
    assert fresh.student.training and not fresh.teacher.training


def test_system_py_imports_torch_when_the_losses_call_no_torch_function(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = tg.capture(nn.Sequential(nn.Linear(4, 2)), (torch.randn(3, 4),))
    batch = {"x": torch.randn(8, 4), "y": torch.randn(8, 2)}
    system = System(models={"net": net}, losses={"net": lambda m, b: F.mse_loss(m.net(b["x"]), b["y"])},
                    optimizers={"net": ("SGD", {"lr": 0.1})}, example_batch=batch)
    code = tg.emit(system)
    assert "\nimport torch\n" in code.source
    code.save(tmp_path / "net")
    result = train_emitted({"net": tmp_path / "net"}, {"net": {k: v.expand(4, *v.shape) for k, v in batch.items()}})
    losses = result["net"]["losses"]["net"]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_losses_with_their_own_constants_and_method_names() -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 3)
    models = {"net": tg.capture(nn.Linear(3, 2), (x,)), "net_loss": tg.capture(nn.Linear(3, 2), (x,))}

    def a(m, b):  # type: ignore[no-untyped-def]
        return (m.net(b["x"]) * torch.tensor([1.0, 2.0])).pow(2).mean()

    def c(m, b):  # type: ignore[no-untyped-def]
        return (m.net_loss(b["x"]) * torch.tensor([3.0, -4.0])).abs().mean()

    system = System(models=models, losses={"net": a, "net_loss": c}, optimizers={"net": "SGD", "net_loss": "SGD"},
                    example_batch={"x": x})
    assert system.loss_methods == {"net": "net_loss2", "net_loss": "net_loss_loss"}
    emitted = tg.emit(system).materialize()
    m = type("Models", (), {"net": emitted.net, "net_loss": emitted.net_loss})
    batch = {"x": torch.randn(4, 3)}
    assert_close(emitted.net_loss2(batch), a(m, batch), **TOL)
    assert_close(emitted.net_loss_loss(batch), c(m, batch), **TOL)
    assert_close(emitted(**batch)[1], c(m, batch), **TOL)


def test_guards_of_a_loss_name_the_loss_and_the_example_batch() -> None:
    torch.manual_seed(2)
    x = torch.randn(5, 3)

    def branchy(m, b):  # type: ignore[no-untyped-def]
        y = m.net(b["x"])
        if b["x"].shape[0] > 2:  # a branch on a size: kept as a guard
            return y.pow(2).mean()
        return y.abs().mean()

    system = System(models={"net": tg.capture(nn.Linear(3, 2), (x,))}, losses={"net": branchy},
                    optimizers={"net": "SGD"}, example_batch={"x": x})
    emitted = tg.emit(system).materialize()
    with pytest.raises(ValueError) as info:
        emitted.losses({"x": torch.randn(2, 3)})
    message = str(info.value)
    assert message.startswith("loss 'net' was captured where a size comparison (>)"), message
    assert "example_batch" in message and "torchgraft.capture" not in message
    assert all("torchgraft.capture" not in text for p, _, text in system.model.report.guards if not p)

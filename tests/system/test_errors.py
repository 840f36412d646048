"""Each wrong System definition fails on construction with an error naming what is wrong and the fix;
and the trainable rules: selectors over parameter keys, frozen flags kept, models without a loss frozen."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import torchgraft as tg
from torchgraft import ir
from torchgraft.errors import CaptureError
from torchgraft.system import System, SystemSpecError


def _net(i: int, o: int, seed: int) -> ir.Model:
    return tg.build(ir.Chain(ir.LinearLayer(i, 8), ir.ReLU(), ir.LinearLayer(8, o)), ir.TensorType(("N", i)), seed=seed)


MODELS = {"student": _net(4, 2, 0), "teacher": _net(4, 2, 1)}
BATCH = {"x": torch.randn(5, 4), "y": torch.randn(5, 2)}


def mse(m, b):  # type: ignore[no-untyped-def]
    return F.mse_loss(m.student(b["x"]), b["y"])


def distill(m, b):  # type: ignore[no-untyped-def]
    return F.mse_loss(m.student(b["x"]), m.teacher(b["x"]))


def _system(**changes: Any) -> System:
    spec: dict[str, Any] = dict(models=MODELS, losses={"student": mse}, optimizers={"student": ("SGD", {"lr": 0.1})},
                                example_batch=BATCH)
    spec.update(changes)
    return System(**spec)


def _fails(error: type[Exception], *needles: str, **changes: Any) -> None:
    with pytest.raises(error) as info:
        _system(**changes)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_data_dependent_loss_reports_capture_error_with_the_loss_name() -> None:
    def branchy(m, b):  # type: ignore[no-untyped-def]
        loss = mse(m, b)
        if loss > 0.5:  # Python control flow on a tensor value: cannot be traced
            return loss * 2
        return loss
    _fails(CaptureError, "loss 'student'", "control flow", losses={"student": branchy})


def test_item_in_a_loss_is_refused() -> None:
    _fails(CaptureError, "loss 'student'", losses={"student": lambda m, b: mse(m, b) * float(b["x"].sum().item())})


def test_non_scalar_loss() -> None:
    per_sample = {"student": lambda m, b: F.mse_loss(m.student(b["x"]), b["y"], reduction="none")}
    _fails(SystemSpecError, "loss 'student'", "shape (5, 2)", "not a floating-point scalar", ".mean()",
           losses=per_sample)
    _fails(SystemSpecError, "returned tuple, not a tensor", losses={"student": lambda m, b: (mse(m, b),)})


def test_loss_naming_a_model_that_is_not_there() -> None:
    _fails(SystemSpecError, "loss 'student' uses m.critic", "no model 'critic'", "['student', 'teacher']",
           losses={"student": lambda m, b: m.critic(b["x"]).mean()})


def test_keys_that_do_not_match_models() -> None:
    _fails(SystemSpecError, "losses name ['critic']", "the models are ['student', 'teacher']",
           losses={"critic": mse}, optimizers={"critic": "SGD"})
    _fails(SystemSpecError, "optimizers name ['critic']", optimizers={"student": "SGD", "critic": "SGD"})
    _fails(SystemSpecError, "losses and optimizers must name the same models",
           optimizers={"student": "SGD", "teacher": "SGD"})
    _fails(SystemSpecError, "loss_weights name ['teacher']", loss_weights={"teacher": 2.0})


def test_unknown_optimizer_and_bad_options() -> None:
    _fails(SystemSpecError, "unknown optimizer 'Adamm'", "Adam, AdamW", optimizers={"student": "Adamm"})
    _fails(SystemSpecError, "LBFGS", "closure", optimizers={"student": "LBFGS"})
    _fails(SystemSpecError, "no option 'learning_rate'", "lr", optimizers={"student": ("Adam", {"learning_rate": 1})})
    _fails(SystemSpecError, "option lr must be a literal", optimizers={"student": ("Adam", {"lr": torch.tensor(0.1)})})
    _fails(SystemSpecError, "finite", optimizers={"student": ("Adam", {"lr": float("nan")})})
    _fails(SystemSpecError, "not a torch.optim optimizer class", optimizers={"student": dict})


def test_trainable_that_selects_nothing() -> None:
    _fails(SystemSpecError, "trainable='head.*' selects no parameter of model 'student'", trainable="head.*")
    _fails(SystemSpecError, "trainable leaves out model 'student'", trainable={"teacher": "*"})
    _fails(SystemSpecError, "trainable names ['critic']", trainable={"critic": "*"})
    frozen = tg.build(ir.Chain(ir.LinearLayer(4, 2)), ir.TensorType(("N", 4)), seed=0)
    frozen = frozen.with_root(frozen.root, frozen=tuple(frozen.weights))
    _fails(SystemSpecError, "selects only frozen parameters of model 'student'", models={"student": frozen},
           losses={"student": lambda m, b: F.mse_loss(m.student(b["x"]), b["y"])})


def test_loss_that_reaches_no_trainable_parameter() -> None:
    _fails(SystemSpecError, "loss 'student' does not depend on any trainable parameter",
           losses={"student": lambda m, b: F.mse_loss(m.student(b["x"]).detach(), b["y"])})


def test_bad_models_names_and_batches() -> None:
    _fails(SystemSpecError, "model name 'loss' cannot be an attribute", models={"loss": MODELS["student"]},
           losses={"loss": mse}, optimizers={"loss": "SGD"})
    _fails(SystemSpecError, "not an ir.Model", "tg.capture", models={"student": torch.nn.Linear(4, 2)})
    _fails(SystemSpecError, "example_batch", example_batch={"x": [1.0]})


def test_selectors_pick_parameter_keys_and_untrained_models_are_frozen() -> None:
    system = _system(losses={"student": distill}, trainable={"student": "2.*"})
    assert system.trainable_parameters() == {"student": ("student.2.weight", "student.2.bias")}
    assert _system(trainable="student.0.weight").trainable_parameters() == {"student": ("student.0.weight",)}
    assert _system(trainable="kind:Linear").trainable_parameters()["student"] == (
        "student.0.weight", "student.0.bias", "student.2.weight", "student.2.bias")
    emitted = tg.emit(system).materialize()
    assert sorted(k for k, p in emitted.named_parameters() if p.requires_grad) == ["student.2.bias",
                                                                                    "student.2.weight"]
    before = {k: v.clone() for k, v in emitted.state_dict().items()}
    emitted.setup(BATCH).training_step(BATCH, 0)
    changed = sorted(k for k, v in emitted.state_dict().items() if not torch.equal(v, before[k]))
    assert changed == ["student.2.bias", "student.2.weight"]  # the teacher (no loss) and student.0 stay


def test_frozen_parameters_stay_frozen_whatever_selects_them() -> None:
    student = MODELS["student"]
    student = student.with_root(student.root, frozen=("0.weight", "0.bias"))
    system = _system(models={"student": student, "teacher": MODELS["teacher"]}, trainable="*")
    assert system.trainable_parameters() == {"student": ("student.2.weight", "student.2.bias")}

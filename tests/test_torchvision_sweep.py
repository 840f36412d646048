"""Every torchvision classifier, captured once, with every check run on that capture.

- round trip: emit -> save -> fresh-process ``load()`` (torchgraft not importable) equals
  eager at the capture batch (2) and at batches 1 and 3 (symbolic batch);
  ``build()`` has exactly the original state_dict keys and loads it ``strict=True``;
- surgery: ``swap-activation{from=relu to=silu},fuse-conv-bn`` emitted and reloaded matches an
  independent reference (the original with every relu spelling patched to silu, built
  without torchgraft) within 1e-4 x max|output|; no relu is left in the source; no more
  BatchNorm remains than after torch.fx's ``fuse()``;
- the emitted model.py defines every name it uses and leaves no variable unused (ruff F821/F841),
  and is formatted: ``ruff format --isolated --check`` and ``ruff check`` (E, F, W but E501) are clean
  on it and on the rewritten model.py,
  and defines no class the original model does not have (one class per original class;
  ``EXTRA_CLASSES`` would list exceptions: there are none).

Weights go to a temporary folder removed after each model (vit_h_14 alone is 2.5 GB).
"""

from __future__ import annotations

import contextlib
import copy
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.fx.experimental.optimization
import torch.nn.functional as F
from torch import nn
from zoo import assert_formatted, assert_names_defined, import_torchvision, input_size, run_fresh_many

import torchgraft
from torchgraft.ir.nodes import Block
from torchgraft.ir.printer import structural_form
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify

tv = import_torchvision()
MODELS = tv.models.list_models(module=tv.models)
PIPELINE = "swap-activation{from=relu to=silu},fuse-conv-bn"
EXTRA_CLASSES: set[str] = set()
"""Emitted classes no original class stands for (none: ShuffleNet's two InvertedResidual forwards share
one class that branches on a flag, README)."""


def _randomize_zero_params(model: nn.Module) -> None:
    """Some heads are zero-initialised (vit); give them random values so outputs are not all 0."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)


@contextlib.contextmanager
def relu_is_silu() -> Iterator[None]:
    """Every spelling of relu computes silu (nn.ReLU calls F.relu): the independent reference."""
    saved = {(F, "relu"): F.relu, (torch, "relu"): torch.relu, (torch, "relu_"): torch.relu_,
             (torch.Tensor, "relu"): torch.Tensor.relu, (torch.Tensor, "relu_"): torch.Tensor.relu_}
    F.relu = lambda x, inplace=False: F.silu(x, inplace=inplace)  # type: ignore[assignment]
    torch.relu = F.silu  # type: ignore[assignment]
    torch.relu_ = lambda x: F.silu(x, inplace=True)  # type: ignore[assignment]
    torch.Tensor.relu = lambda self: F.silu(self)  # type: ignore[assignment]
    torch.Tensor.relu_ = lambda self: F.silu(self, inplace=True)  # type: ignore[assignment]
    try:
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    torch.testing.assert_close(out, ref, atol=rel * ref.abs().max().item(), rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model(name: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"tg-sweep-{name}-") as folder:
        _check_model(name, Path(folder))


STRUCTURAL = {"resnet": {"BasicBlock", "Bottleneck"}, "resnext": {"Bottleneck"}, "wide_resnet": {"Bottleneck"},
              "mobilenet_v2": {"InvertedResidual"}, "mnasnet": {"_InvertedResidual"},
              "mobilenet_v3": {"InvertedResidual", "SqueezeExcitation"},
              "efficientnet": {"MBConv", "FusedMBConv", "SqueezeExcitation"}}
"""Block classes whose forward is only structure (counted over the zoo by benchmarks/structure_share.py)."""


def _check_structure(name: str, ir_model: torchgraft.ir.Model) -> None:
    """Every Block of the classes ``STRUCTURAL`` lists for this family reads as structure."""
    classes = next((c for prefix, c in STRUCTURAL.items() if name.startswith(prefix)), set())
    blocks = [n for _, n in walk(ir_model.root) if isinstance(n, Block) and n.cls.name in classes]
    helpers = ir_model.helper_functions()  # stochastic depth: returns its input or a new tensor
    assert all(structural_form(b.body, b, helpers) is not None for b in blocks), name
    assert blocks or not classes, f"{name}: no {classes} Blocks captured"


def _check_model(name: str, tmp_path: Path) -> None:
    """Every check on one capture; ``tmp_path`` is removed by the caller, pass or fail."""
    torch.manual_seed(0)
    model = tv.models.get_model(name).eval()
    _randomize_zero_params(model)
    size = input_size(name)
    xs = {f"b{n}": torch.randn(n, 3, size, size) for n in (1, 2, 3)}
    with torch.no_grad():
        refs = {k: model(x) for k, x in xs.items()}
        with relu_is_silu():
            swapped_ref = model(xs["b2"])
    original_keys = list(model.state_dict())

    ir_model = torchgraft.capture(model, (xs["b2"],))
    assert not ir_model.report.opaque, ir_model.report.summary()
    verify(ir_model)
    assert ir_model.inputs[0].type.shape[0] == "N"
    _check_structure(name, ir_model)
    code = torchgraft.emit(ir_model)
    assert "getattr(self" not in code.source
    emitted_classes = set(re.findall(r"^class (\w+)\(", code.source, re.M))
    assert emitted_classes - {type(m).__name__ for m in model.modules()} <= EXTRA_CLASSES, emitted_classes
    plain, rewritten = tmp_path / "plain", tmp_path / "rewritten"
    code.save(plain)
    assert_names_defined(plain / "model.py")

    result = torchgraft.passes.run(ir_model, PIPELINE)
    new_code = torchgraft.emit(result.model)
    assert not re.search(r"relu(?!6)", new_code.source, re.IGNORECASE), "a relu survived the swap"
    new_code.save(rewritten)
    assert_formatted(plain / "model.py", rewritten / "model.py")
    del ir_model, result

    outs = run_fresh_many({plain: xs, rewritten: {"b2": xs["b2"]}})
    for key, ref in refs.items():
        _close(outs[plain][key], ref, 1e-5)
    _close(outs[rewritten]["b2"], swapped_ref, 1e-4)

    rebuilt = new_code.materialize(load_weights=False, device="meta")
    assert _count_bn(rebuilt) <= _count_bn(torch.fx.experimental.optimization.fuse(copy.deepcopy(model)))
    rebuilt = code.materialize(load_weights=False, device="meta")
    assert list(rebuilt.state_dict()) == original_keys
    rebuilt.load_state_dict(model.state_dict(), strict=True, assign=True)
    assert list(model.state_dict()) == original_keys  # capture did not change the model

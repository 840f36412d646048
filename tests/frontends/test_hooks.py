"""Forward hooks are refused loudly at capture: the emitted model.py could not run them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.errors import CaptureError
from torchgraft.frontends.hooks import refuse_hooks


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x))


def scale_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output * 2


def shift_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (args[0] + 1,)


def scale_with_kwargs(module: nn.Module, args: Any, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
    return output * 3


def shift_with_kwargs(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return (args[0] - 1,), kwargs


Register = Callable[[nn.Module], Any]

CASES: dict[str, tuple[Register, str, str]] = {
    "forward hook": (lambda m: m.register_forward_hook(scale_output), "forward hook", "scale_output"),
    "pre-hook": (lambda m: m.register_forward_pre_hook(shift_input), "forward pre-hook", "shift_input"),
    "hook with kwargs": (lambda m: m.register_forward_hook(scale_with_kwargs, with_kwargs=True),
                         "forward hook (with_kwargs)", "scale_with_kwargs"),
    "pre-hook with kwargs": (lambda m: m.register_forward_pre_hook(shift_with_kwargs, with_kwargs=True),
                             "forward pre-hook (with_kwargs)", "shift_with_kwargs"),
}


def _x() -> torch.Tensor:
    return torch.randn(3, 4)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("where", ["", "inner", "inner.fc"])
def test_module_hook_is_refused_naming_path_kind_and_function(case: str, where: str) -> None:
    register, kind, fn_name = CASES[case]
    model = Outer()
    handle = register(model.get_submodule(where))
    with pytest.raises(CaptureError) as info:
        torchgraft.capture(model, (_x(),))
    message = str(info.value)
    assert f"{where or '<root>'}: {kind} {fn_name}" in message
    assert "handle.remove()" in message and "capture without it" in message
    assert info.value.path == where
    handle.remove()


@pytest.fixture
def global_hooks() -> Iterator[list[Any]]:
    """Handles of global hooks a test registers; removed afterwards even when the test fails."""
    handles: list[Any] = []
    yield handles
    for h in handles:
        h.remove()


def test_global_hooks_are_refused(global_hooks: list[Any]) -> None:
    global_hooks.append(nn.modules.module.register_module_forward_hook(scale_output))
    global_hooks.append(nn.modules.module.register_module_forward_pre_hook(shift_input))
    with pytest.raises(CaptureError) as info:
        torchgraft.capture(Outer(), (_x(),))
    message = str(info.value)
    assert "<every module>: global forward hook scale_output" in message
    assert "<every module>: global forward pre-hook shift_input" in message
    assert info.value.path == ""


def test_every_offending_hook_is_listed_in_one_error(global_hooks: list[Any]) -> None:
    model = Outer()
    model.register_forward_hook(scale_output)
    model.inner.register_forward_pre_hook(shift_input)
    model.head.register_forward_hook(scale_with_kwargs, with_kwargs=True)
    global_hooks.append(nn.modules.module.register_module_forward_hook(scale_output))
    with pytest.raises(CaptureError) as info:
        refuse_hooks(model)
    message = str(info.value)
    assert "4 forward hooks" in message
    for line in ("<every module>: global forward hook scale_output", "<root>: forward hook scale_output",
                 "inner: forward pre-hook shift_input", "head: forward hook (with_kwargs) scale_with_kwargs"):
        assert line in message
    assert info.value.path == "", "a global hook makes the root the first place it applies"


def test_nested_hook_names_its_path_and_a_lambda_its_qualname() -> None:
    model = Outer()
    model.inner.fc.register_forward_hook(lambda m, a, o: o + 1)
    expected = r"inner\.fc: forward hook test_nested_hook_names_its_path.*<lambda>"
    with pytest.raises(CaptureError, match=expected) as info:
        torchgraft.capture(model, (_x(),))
    assert info.value.path == "inner.fc"


def test_callable_object_hook_is_named_by_its_repr() -> None:
    class Scale:
        def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            return output * 2

        def __repr__(self) -> str:
            return "Scale(2)"

    model = Outer()
    model.head.register_forward_hook(Scale())
    with pytest.raises(CaptureError, match=r"head: forward hook Scale\(2\)"):
        refuse_hooks(model)


class _Scaled(nn.Module):
    """A user module with a weight: a legacy weight_norm on it is a hook capture cannot re-register."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_legacy_weight_norm_points_to_parametrizations() -> None:
    model = nn.Sequential(_Scaled())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated: the point of the hint
        nn.utils.weight_norm(model[0])
    with pytest.raises(CaptureError, match=r"0: forward pre-hook .*parametrizations\.weight_norm"):
        refuse_hooks(model)


def test_legacy_weight_norm_on_a_torch_layer_is_not_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.utils.weight_norm(model[0])
    refuse_hooks(model)  # capture registers it again (frontends.reparam; tests/frontends/test_parametrize.py)


def test_model_without_forward_hooks_still_captures() -> None:
    model = Outer()
    model.register_full_backward_hook(lambda m, gi, go: None)  # does not change forward outputs
    model.register_state_dict_post_hook(lambda m, sd, prefix, local: None)
    captured = torchgraft.capture(model, (_x(),))
    x = _x()
    torch.testing.assert_close(torchgraft.emit(captured).materialize()(x), model(x))


def test_refused_model_keeps_its_hooks_and_is_unchanged() -> None:
    model = Outer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = model.inner.register_forward_hook(scale_output)
    x = _x()
    expected = model(x)
    with pytest.raises(CaptureError):
        torchgraft.capture(model, (x,))
    assert list(model.inner._forward_hooks.values()) == [scale_output]
    torch.testing.assert_close(model(x), expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    handle.remove()
    torchgraft.capture(model, (x,))  # once removed, capture goes ahead

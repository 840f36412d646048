"""One run of an emitted hand-built model on meta inputs, recording every module's output type.

Forward pre-hooks keep a stack of the modules being run, with the types of their inputs, so
that when the model fails the innermost module (the one whose own code raised) is known.

>>> rec = record(nn.Sequential(nn.Linear(4, 2)), (torch.zeros(3, 4, device="meta"),), "cpu")  # doctest: +SKIP
>>> rec.outputs["0"]                                                                          # doctest: +SKIP
TensorType(shape=(3, 2), dtype='float32', device='cpu')
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from torchgraft.ir.types import Dim, ScalarType, TensorType, ValueType, type_of


@dataclass(frozen=True, slots=True)
class Failure:
    """Where a run failed: the innermost module's path, class and arguments (and their types), the error."""

    path: str
    cls: str
    inputs: ValueType
    error: Exception
    module: nn.Module | None = None
    args: tuple[Any, ...] = ()


@dataclass(slots=True)
class Recording:
    """Output types by module path (first call of each), or the failure that stopped the run."""

    outputs: dict[str, ValueType] = field(default_factory=dict)
    failure: Failure | None = None


def example(t: TensorType, sizes: Mapping[str, int]) -> torch.Tensor:
    """A meta tensor of type ``t`` with each symbol at its trial size (zeros: valid indices, False)."""
    shape = [sizes[d] if isinstance(d, str) else d for d in t.shape]
    return torch.zeros(shape, dtype=getattr(torch, t.dtype), device="meta")


def record(module: nn.Module, args: tuple[Any, ...], device: str) -> Recording:
    """Run ``module(*args)`` without grad, recording output types (``device`` stands for meta)."""
    rec = Recording()
    paths: dict[int, str] = {}
    for p, m in module.named_modules():
        paths.setdefault(id(m), p)
    stack: list[tuple[int, nn.Module, tuple[Any, ...]]] = []

    def pre(m: nn.Module, a: tuple[Any, ...]) -> None:
        stack.append((id(m), m, a))

    def post(m: nn.Module, a: tuple[Any, ...], out: Any) -> None:
        while stack and stack.pop()[0] != id(m):  # entries a caught exception left behind
            pass
        rec.outputs.setdefault(paths[id(m)], type_of(out, None, device))

    hooks = [h for m in module.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.no_grad():
            module(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the user's model is reported with its path
        _, m, a = stack[-1] if stack else (0, module, args)
        rec.failure = Failure(paths[id(m)], type(m).__name__, type_of(a, None, device), e, m, a)
    finally:
        for h in hooks:
            h.remove()
    return rec


MAX_RERUN = 1 << 24
"""The most elements (state and arguments) a failing module may hold to be rerun on the CPU."""


def cpu_error(failure: Failure) -> Exception | None:
    """The error the failing module raises on the CPU, on zero arguments of the same shapes.

    Meta kernels check less and say it worse (``Invalid channel dimensions``) than the CPU ones
    (``expected input[11, 8, 30, 30] to have 4 channels``). None when it is too large to rerun,
    or does not fail on the CPU.
    """
    if failure.module is None:
        return None
    sizes: list[int] = [t.numel() for t in (*failure.module.parameters(), *failure.module.buffers())]
    tree_map_only(torch.Tensor, lambda t: sizes.append(t.numel()), failure.args)
    if sum(sizes) > MAX_RERUN:
        return None
    try:
        twin = copy.deepcopy(failure.module).to_empty(device="cpu")
        args = tree_map_only(torch.Tensor, lambda t: torch.zeros(t.shape, dtype=t.dtype), failure.args)
    except Exception:  # noqa: BLE001 - no CPU twin: the meta error stands
        return None
    try:
        with torch.no_grad():
            twin(*args)
    except Exception as e:  # noqa: BLE001 - the message is what we want
        return e
    return None


def show_inputs(t: ValueType) -> str:
    """A module's argument types as a call shows them: ``f32[N, 8]`` or ``f32[N, 8], i64[N]``."""
    if isinstance(t, ScalarType) and t.name == "tuple":
        return ", ".join(map(str, t.items)) or "no arguments"
    return str(t)


def _dims(t: ValueType) -> list[Dim]:
    if isinstance(t, TensorType):
        return list(t.shape)
    if isinstance(t, ScalarType):
        return [d for i in t.items for d in _dims(i)]
    return []


def symbol_map(concrete: ValueType, symbolic: ValueType, sizes: Mapping[str, int]) -> dict[int, str]:
    """Trial numbers → what they stand for: each symbol's size, and each derived dim's value."""
    out: dict[int, str] = {v: s for s, v in sizes.items()}
    for c, s in zip(_dims(concrete), _dims(symbolic)):
        if isinstance(c, int) and isinstance(s, str):
            out.setdefault(c, s)
    return out


_SHAPE_LIST = re.compile(r"[\[(]\s*\d+(?:\s*,\s*\d+)*\s*,?\s*[\])]|\b\d+(?:x\d+)+\b")


def symbolic_message(text: str, numbers: Mapping[int, str]) -> str:
    """``text`` with the trial numbers inside shapes (``[11, 8, 30, 30]``, ``11x8``) replaced by symbols."""
    def swap(m: re.Match[str]) -> str:
        return re.sub(r"\d+", lambda n: numbers.get(int(n.group()), n.group()), m.group())

    return _SHAPE_LIST.sub(swap, text)

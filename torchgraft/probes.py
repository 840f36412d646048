"""Inputs beyond the example for :func:`torchgraft.check`, and the runs that feed them in.

A capture sees one call, so ``check`` also runs both modules on inputs derived from the
example (:func:`torchgraft.probe_inputs.make_probes`)::

    example        the example inputs, as given
    batch=1, =B+1  every tensor whose leading dim is the example's batch size B, resized
    length=L+3     integer token ids of rank >= 2 (and masks, positions, per-token floats
                   sharing that length) one length longer; ``spatial=True`` adds a probe
                   that grows dims 2+ of float inputs of rank >= 3 (images, audio)
    padding=right  0/1 masks with the end of some rows padded (one kept value per row)
    padding=left   the same at the start of the rows
    repeat=3       three calls in a row on one copy of each model (state updated in forward)

Resized tensors get fresh random values of their kind: floats ``randn`` scaled to the
example's mean and std, token ids in the example's ``[min, max]``, masks filled with
their majority (kept) value, positions ``arange`` from the example's first position,
bools at random. An input's kind comes from its values and its name in ``forward``:
a 0/1 tensor named ``*mask*`` is a mask, as is a 0/1 integer or bool tensor (not named
``*ids``) shaped like a token input; an integer tensor named ``pos*``/``*_pos*`` holds
positions; other integer tensors hold token ids. Values come from a generator seeded
with ``seed``, never from the global RNG.

Running: :func:`run_copy` runs a deep copy of one module (seeded, on clones of the
inputs, outputs cloned), :func:`run_both` runs both and sorts what they raise,
:func:`record` keeps every submodule's output tensors (to find the first divergence).

>>> from torchgraft.probe_inputs import make_probes
>>> probes = make_probes(nn.Identity(), (torch.zeros(2, 5, dtype=torch.long),), {}, ("batch",))
>>> [p.name for p in probes]
['batch=1', 'batch=3']
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["PROBE_KINDS", "PairRun", "Probe", "flatten", "probe_kinds", "error_text", "record", "run_both", "run_copy"]

PROBE_KINDS = ("example", "batch", "length", "padding", "repeat")
REPEAT_CALLS = 3
OK, MISMATCH, REFUSED, SKIPPED = "ok", "MISMATCH", "refused", "skipped"

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
Flat = list[tuple[str, Any]]
Calls = list[tuple[tuple[str, int], Flat]]
Deltas = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Probe:
    """One set of inputs to run both modules on: ``calls`` calls, or a reason it cannot run (``skip``)."""

    kind: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    calls: int = 1
    skip: str = ""


def probe_kinds(probes: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The probe kinds an option value selects, in :data:`PROBE_KINDS` order.

    ``True`` (or ``"all"``) selects all, ``False``/``None`` the example only; a string
    may list kinds separated by commas.

    >>> probe_kinds("repeat,example")
    ('example', 'repeat')
    """
    if probes is True or probes == "all":
        return PROBE_KINDS
    if probes is False or probes is None:
        return ("example",)
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else list(probes)
    unknown = [p for p in names if p not in PROBE_KINDS]
    if unknown or not names:
        raise ValueError(f"check: unknown probe(s) {unknown}; use any of {list(PROBE_KINDS)}, True or False")
    return tuple(k for k in PROBE_KINDS if k in names)


# ---------------------------------------------------------------------------- running


def run_copy(
    module: nn.Module,
    mode: str,
    inputs: Inputs,
    seed: int,
    calls: int = 1,
    install: Callable[[nn.Module], None] | None = None,
    before_call: Callable[[int], None] | None = None,
) -> tuple[nn.Module, list[Any]]:
    """Run a deep copy of ``module`` ``calls`` times in ``mode``; the copy and each call's output.

    Every call gets fresh clones of ``inputs`` and runs under ``torch.no_grad()`` after
    ``torch.manual_seed(seed + i)``; the caller's RNG state is restored afterwards.
    ``install`` sees the copy before the first call (to add hooks), ``before_call`` runs
    before each call with its index. Outputs are cloned, so later calls cannot change them.
    """
    model = copy.deepcopy(module).train(mode == "train")
    if install is not None:
        install(model)
    outputs = []
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
        for i in range(calls):
            if before_call is not None:
                before_call(i)
            args, kwargs = clone(inputs)
            torch.manual_seed(seed + i)
            outputs.append(clone(model(*args, **kwargs)))
    return model, outputs


def _cuda_devices() -> list[int]:
    """CUDA devices whose RNG state ``manual_seed`` changes (none unless CUDA is in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def clone(value: Any) -> Any:
    """A copy of a nested structure with every tensor detached and cloned."""
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


@dataclass
class PairRun:
    """Both modules run on one probe: each call's outputs and how each buffer changed, or why not.

    ``failure`` is ``(status, reason)`` when a module raised: ``skipped`` for the
    reference, ``refused`` for the candidate's ``ValueError``, ``MISMATCH`` for any other.
    """

    failure: tuple[str, str] | None = None
    ref: list[Any] = field(default_factory=list)
    cand: list[Any] = field(default_factory=list)
    deltas: tuple[Deltas | None, Deltas | None] = (None, None)


def run_both(ref: nn.Module, cand: nn.Module, mode: str, inputs: Inputs, seed: int, calls: int = 1) -> PairRun:
    """Run copies of both modules on ``inputs`` (see :func:`run_copy`), catching what they raise."""
    try:
        ref_model, ref_outs = run_copy(ref, mode, inputs, seed, calls)
    except Exception as e:  # noqa: BLE001 - the reference does not take these inputs
        return PairRun((SKIPPED, f"reference raised {error_text(e)}"))
    try:
        cand_model, cand_outs = run_copy(cand, mode, inputs, seed, calls)
    except ValueError as e:  # a run-time guard of an emitted model: loud, not wrong
        return PairRun((REFUSED, f"candidate raised {error_text(e)}"))
    except Exception as e:  # noqa: BLE001 - any other error is a failure, reported as one
        return PairRun((MISMATCH, f"candidate raised {error_text(e)}"))
    return PairRun(None, ref_outs, cand_outs, (_buffer_deltas(ref, ref_model), _buffer_deltas(cand, cand_model)))


def flatten(value: Any, path: str = "out") -> Flat:
    """Leaves of a nested output as ``(path, leaf)`` pairs, e.g. ``("out['logits']", tensor)``.

    Mappings (including transformers' ``ModelOutput``) give ``[key]``, lists and tuples
    ``[i]``, named tuples and dataclass instances ``.field``; anything else is a leaf.
    """
    return list(_walk(value, path))


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Depth-first leaves of ``value`` (see :func:`flatten`)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}[{key!r}]")
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for name, item in zip(value._fields, value, strict=True):
            yield from _walk(item, f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name), f"{path}.{f.name}")
    else:
        yield path, value


def record(module: nn.Module, mode: str, inputs: Inputs, seed: int, calls: int = 1) -> Calls:
    """Run a copy of ``module`` with a forward hook on every submodule; what the last call recorded.

    Returns ``((name, k), tensors)`` in the order the calls finish, ``k`` counting the
    calls of a module used more than once; the tensors are cloned when recorded, so
    later in-place ops do not change them.
    """
    recorded: Calls = []
    counts: dict[str, int] = {}

    def install(model: nn.Module) -> None:
        for name, sub in model.named_modules():
            sub.register_forward_hook(_hook(name, recorded, counts))

    def forget(_i: int) -> None:
        recorded.clear()
        counts.clear()

    run_copy(module, mode, inputs, seed, calls, install, forget)
    return recorded


def _hook(name: str, calls: Calls, counts: dict[str, int]) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook appending the module's output tensors to ``calls``."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        k = counts[name] = counts.get(name, -1) + 1
        tensors = [(p, v.detach().clone()) for p, v in flatten(output) if isinstance(v, torch.Tensor)]
        calls.append(((name, k), tensors))

    return hook


def _buffer_deltas(before: nn.Module, after: nn.Module) -> Deltas | None:
    """``after``'s buffers minus ``before``'s, in double precision (``None`` if they differ in names)."""
    old, new = dict(before.named_buffers()), dict(after.named_buffers())
    if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in old):
        return None
    return {k: _double(new[k]) - _double(old[k].to(new[k].device)) for k in old}


def _double(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float64 (complex128 for complex tensors)."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def error_text(e: BaseException) -> str:
    """``Type: first line of the message``, cut to a readable length."""
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text if len(text) <= 100 else text[:97] + '...'}"


# ---------------------------------------------------------------------------- inputs

"""Numerical equivalence of two modules: ``check(reference, candidate, args)``.

Both modules run on the same inputs in eval mode and in train mode (the RNG seeded
before every run, so dropout draws the same masks). Every output tensor is compared;
on a mismatch the modules run again with forward hooks on every submodule, and the
first submodule (in the order the reference finishes them) whose output differs is
reported. The modules passed in are never changed: each run uses deep copies.

Tolerance per output tensor: ``max |ref - cand| <= atol + rtol * max |ref|``, with
``atol=1e-7`` and ``rtol=1e-5`` unless given.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["CheckReport", "OutputDiff", "check"]

MODES = ("eval", "train")
DEFAULT_ATOL = 1e-7
DEFAULT_RTOL = 1e-5

Flat = list[tuple[str, Any]]
Calls = list[tuple[tuple[str, int], Flat]]


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference of one tensor: ``atol + rtol * max |ref|``."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def allowed(self, ref_scale: float) -> float:
        """The largest absolute difference accepted for a reference of this magnitude."""
        return self.atol + self.rtol * ref_scale


@dataclass
class OutputDiff:
    """How one output (one tensor or other leaf of the output structure) compares in one mode.

    ``path`` names the leaf like ``out[0]`` or ``out['logits']``. ``max_rel`` is
    ``max_abs / max |ref|``; both are NaN where the two cannot be compared (missing
    output, shapes or kinds differ). Shapes are ``None`` where that side has no such
    output (or it is not a tensor); ``note`` says why an output failed other than by value.
    """

    mode: str
    path: str
    max_abs: float
    max_rel: float
    ok: bool
    ref_shape: tuple[int, ...] | None = None
    cand_shape: tuple[int, ...] | None = None
    note: str = ""


@dataclass
class CheckReport:
    """The result of :func:`check`: one :class:`OutputDiff` per output and mode.

    ``first_divergence[mode]`` is the qualified name of the first submodule whose
    output differs ("" for the root module), or ``None`` when the mode matched or no
    single submodule could be blamed.
    """

    results: list[OutputDiff] = field(default_factory=list)
    first_divergence: dict[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every output matched in every mode."""
        return all(r.ok for r in self.results)

    def failures(self) -> list[OutputDiff]:
        """The outputs that did not match."""
        return [r for r in self.results if not r.ok]

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with the table when any output differs."""
        if not self.ok:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        """A readable table: one row per output, then the first diverging module per mode."""
        bad = len(self.failures())
        head = "check: ok" if self.ok else f"check: FAILED ({bad} of {len(self.results)} outputs differ)"
        lines = [head, *_table(self.results)]
        for mode, where in self.first_divergence.items():
            if where is not None:
                lines.append(f"first divergence ({mode}): {where or '(root module)'}")
        return "\n".join(lines)


def check(
    reference: nn.Module,
    candidate: nn.Module,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    modes: Sequence[str] = MODES,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> CheckReport:
    """Run ``reference`` and ``candidate`` on the same inputs and compare every output.

    Each mode in ``modes`` ("eval", "train") runs deep copies of both modules under
    ``torch.no_grad()``, with ``torch.manual_seed(seed)`` before every run (the caller's
    RNG state is restored afterwards). Inputs are cloned per run, so in-place ops cannot
    leak from one model's run into the other's. A tensor output matches when
    ``max |ref - cand| <= atol + rtol * max |ref|`` (defaults ``1e-7`` and ``1e-5``);
    other leaves must compare equal, and both outputs must have the same structure.
    On a mismatch, ``first_divergence[mode]`` names the first submodule whose output differs.
    Exceptions raised by either model propagate.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"check: unknown mode(s) {unknown}; use any of {list(MODES)}")
    tol = Tolerance(DEFAULT_ATOL if atol is None else atol, DEFAULT_RTOL if rtol is None else rtol)
    run = _Runner(tuple(args), dict(kwargs or {}), seed)
    report = CheckReport()
    for mode in modes:
        results = compare_outputs(mode, run(reference, mode), run(candidate, mode), tol)
        report.results.extend(results)
        failed = not all(r.ok for r in results)
        report.first_divergence[mode] = _first_divergence(reference, candidate, mode, run, tol) if failed else None
    return report


@dataclass
class _Runner:
    """Runs a deep copy of a module in one mode on fresh clones of the inputs."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    seed: int

    def __call__(self, module: nn.Module, mode: str, hook: Callable[[nn.Module], None] | None = None) -> Any:
        """The module's output; ``hook`` is called on the copy before it runs (to add forward hooks)."""
        model = copy.deepcopy(module).train(mode == "train")
        if hook is not None:
            hook(model)
        args, kwargs = _clone((self.args, self.kwargs))
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(self.seed)
            return model(*args, **kwargs)


def _cuda_devices() -> list[int]:
    """CUDA devices whose RNG state ``manual_seed`` changes (none unless CUDA is in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def _clone(value: Any) -> Any:
    """A copy of a nested input structure with every tensor cloned."""
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


# ---------------------------------------------------------------------------- outputs


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


def compare_outputs(mode: str, ref: Any, cand: Any, tol: Tolerance) -> list[OutputDiff]:
    """One :class:`OutputDiff` per leaf of either output, in the reference's order."""
    ref_flat, cand_flat = flatten(ref), dict(flatten(cand))
    results = [_compare_leaf(mode, path, value, cand_flat, tol) for path, value in ref_flat]
    seen = {path for path, _ in ref_flat}
    extra = [(path, value) for path, value in cand_flat.items() if path not in seen]
    results += [_missing(mode, path, None, value, "only in candidate") for path, value in extra]
    return results


def _compare_leaf(mode: str, path: str, ref: Any, cand_flat: dict[str, Any], tol: Tolerance) -> OutputDiff:
    """Compare the reference leaf at ``path`` with the candidate's leaf there."""
    if path not in cand_flat:
        return _missing(mode, path, ref, None, "missing in candidate")
    cand = cand_flat[path]
    if isinstance(ref, torch.Tensor) and isinstance(cand, torch.Tensor):
        return _compare_tensors(mode, path, ref, cand, tol)
    if isinstance(ref, torch.Tensor) or isinstance(cand, torch.Tensor):
        return _missing(mode, path, ref, cand, f"reference is {_kind(ref)}, candidate is {_kind(cand)}")
    equal = _equal(ref, cand)
    note = "" if equal else f"values differ: {_short(ref)} vs {_short(cand)}"
    return OutputDiff(mode, path, 0.0 if equal else math.nan, 0.0 if equal else math.nan, equal, note=note)


def _compare_tensors(mode: str, path: str, ref: torch.Tensor, cand: torch.Tensor, tol: Tolerance) -> OutputDiff:
    """Max abs/rel difference of two tensors; a shape mismatch fails outright."""
    shapes = tuple(ref.shape), tuple(cand.shape)
    if shapes[0] != shapes[1]:
        return OutputDiff(mode, path, math.nan, math.nan, False, *shapes, note="shapes differ")
    max_abs, scale = tensor_diff(ref, cand)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return OutputDiff(mode, path, max_abs, max_rel, max_abs <= tol.allowed(scale), *shapes)


def tensor_diff(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float]:
    """``(max |ref - cand|, max |ref|)`` of two same-shaped tensors, in double precision.

    Equal values (infinities, NaN against NaN) count as no difference; NaN against a
    number counts as an infinite one. NaNs in ``ref`` are ignored for its magnitude.
    """
    if ref.numel() == 0:
        return 0.0, 0.0
    a, b = _as_double(ref), _as_double(cand.to(ref.device))
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(a.real), (a - b).abs().nan_to_num(nan=math.inf))
    mag = a.abs()
    scale = torch.where(mag.isfinite(), mag, torch.zeros_like(mag)).max()
    return float(diff.max()), float(scale)


def _as_double(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float64 (complex128 for complex tensors), so differences do not round or wrap."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def _missing(mode: str, path: str, ref: Any, cand: Any, note: str) -> OutputDiff:
    """A failing row for an output present on one side only (or of different kinds)."""
    return OutputDiff(mode, path, math.nan, math.nan, False, _shape(ref), _shape(cand), note)


def _shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a tensor, else ``None``."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _kind(value: Any) -> str:
    """A short description of a leaf's kind for messages."""
    return "a tensor" if isinstance(value, torch.Tensor) else type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` for non-tensor leaves, False when the comparison itself fails."""
    try:
        return bool(a == b)
    except Exception:
        return False


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- divergence


def _first_divergence(ref: nn.Module, cand: nn.Module, mode: str, run: _Runner, tol: Tolerance) -> str | None:
    """The first submodule (in the reference's finishing order) whose output differs."""
    ref_calls, cand_calls = _record(ref, mode, run), dict(_record(cand, mode, run))
    for key, ref_flat in ref_calls:
        cand_flat = cand_calls.get(key)
        if cand_flat is not None and _diverges(ref_flat, cand_flat, tol):
            return key[0]
    return None


def _record(module: nn.Module, mode: str, run: _Runner) -> Calls:
    """Run a copy of ``module`` with a forward hook on every submodule.

    Returns ``((name, k), tensors)`` in the order the calls finish, ``k`` counting the
    calls of a module used more than once; the tensors are cloned when recorded, so
    later in-place ops do not change them.
    """
    calls: Calls = []
    counts: dict[str, int] = {}

    def install(model: nn.Module) -> None:
        for name, sub in model.named_modules():
            sub.register_forward_hook(_hook(name, calls, counts))

    run(module, mode, install)
    return calls


def _hook(name: str, calls: Calls, counts: dict[str, int]) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook appending the module's output tensors to ``calls``."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        k = counts[name] = counts.get(name, -1) + 1
        tensors = [(p, v.detach().clone()) for p, v in flatten(output) if isinstance(v, torch.Tensor)]
        calls.append(((name, k), tensors))

    return hook


def _diverges(ref: Flat, cand: Flat, tol: Tolerance) -> bool:
    """True when two recorded module outputs differ in structure, shape, or beyond tolerance."""
    if [p for p, _ in ref] != [p for p, _ in cand]:
        return True
    return not all(_compare_tensors("", p, a, b, tol).ok for (p, a), (_, b) in zip(ref, cand, strict=True))


# ---------------------------------------------------------------------------- table


def _table(results: list[OutputDiff]) -> list[str]:
    """Rows of the report table, columns padded to their widest cell."""
    header = ["mode", "output", "ref shape", "cand shape", "max abs", "max rel", "status"]
    rows = [header, *[_row(r) for r in results]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _row(r: OutputDiff) -> list[str]:
    """One table row; a failing row carries its note."""
    status = "ok" if r.ok else "FAIL" + (f" ({r.note})" if r.note else "")
    return [r.mode, r.path, _fmt_shape(r.ref_shape), _fmt_shape(r.cand_shape), _num(r.max_abs), _num(r.max_rel), status]


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    """``[2, 10]`` for a shape, ``-`` for none."""
    return "-" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _num(x: float) -> str:
    """A difference in short scientific notation (``-`` when not comparable)."""
    return "-" if math.isnan(x) else f"{x:.2e}"

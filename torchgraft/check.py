"""Numerical equivalence of two modules: ``check(reference, candidate, args)``.

Both modules run on the same inputs in eval mode and in train mode (the RNG seeded
before every run, so dropout draws the same masks). Every output tensor is compared;
on a mismatch the modules run again with forward hooks on every submodule, and the
first submodule (in the order the reference finishes them) whose output differs is
reported. The modules passed in are never changed: each run uses deep copies.

Beyond the example, ``check`` probes other inputs (see :mod:`torchgraft.probes`):
batch 1 and batch+1, a longer token length, right- and left-padded masks, and three
calls in a row. Each probe ends ``ok``, ``MISMATCH`` (fails the check), ``refused``
(the candidate raised ``ValueError``: a run-time guard, loud rather than wrong) or
``skipped`` (the reference itself does not run on those inputs).

Tolerance per output tensor: ``max |ref - cand| <= atol + rtol * max |ref|``, with
``atol=1e-7`` and ``rtol=1e-5`` unless given. A transformers cache object the reference
returns (``DynamicCache``) is not compared: capture leaves it out of the emitted model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchgraft.frontends.cache_free import is_cache
from torchgraft.probe_inputs import make_probes
from torchgraft.probes import (
    MISMATCH,
    OK,
    PROBE_KINDS,
    REFUSED,
    SKIPPED,
    Deltas,
    Flat,
    Inputs,
    Probe,
    flatten,
    probe_kinds,
    record,
    run_both,
    run_copy,
)
from torchgraft.train_batch import train_batch_error

__all__ = ["PROBE_KINDS", "CheckReport", "OutputDiff", "ProbeResult", "check", "flatten", "tensor_diff"]

MODES = ("eval", "train")
DEFAULT_ATOL = 1e-7
DEFAULT_RTOL = 1e-5

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

    ``path`` names the leaf like ``out[0]`` or ``out['logits']`` (``call2:out[0]`` for the
    second of repeated calls, ``state['bn.running_mean']`` for a buffer's change over
    them). ``max_rel`` is ``max_abs / max |ref|``; both are NaN where the two cannot be
    compared (missing output, shapes or kinds differ). Shapes are ``None`` where that
    side has no such output (or it is not a tensor); ``note`` says why an output failed
    other than by value.
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
class ProbeResult:
    """How the two modules compare on one probe (``example``, ``batch=1``, ...) in one mode.

    ``status`` is ``ok``, ``MISMATCH`` (outputs differ, or the candidate raised something
    other than ``ValueError``), ``refused`` or ``skipped``; ``reason`` says why when not
    ok. ``max_abs``/``max_rel`` are the largest over the outputs (NaN when none compared);
    ``results`` holds every output's row and ``first_divergence`` the first submodule
    whose output differs, when one could be blamed.

    >>> ProbeResult("eval", "batch=1", "skipped", reason="reference raised ValueError: ...").failed
    False
    """

    mode: str
    name: str
    status: str
    max_abs: float = math.nan
    max_rel: float = math.nan
    reason: str = ""
    results: list[OutputDiff] = field(default_factory=list)
    first_divergence: str | None = None

    @property
    def failed(self) -> bool:
        """True for a ``MISMATCH``: ``refused`` and ``skipped`` probes do not fail a check."""
        return self.status == MISMATCH


@dataclass
class CheckReport:
    """The result of :func:`check`: one :class:`OutputDiff` per example output and mode, one
    :class:`ProbeResult` per probe and mode.

    ``results`` and ``first_divergence`` describe the example inputs; ``first_divergence[mode]``
    is the qualified name of the first submodule whose output differs ("" for the root
    module), or ``None`` when the mode matched or no single submodule could be blamed.

    >>> net = nn.Linear(3, 2)
    >>> report = check(net, copy.deepcopy(net), (torch.randn(2, 3),), modes=("eval",))
    >>> report.ok, [(p.name, p.status) for p in report.probes][:3]
    (True, [('example', 'ok'), ('batch=1', 'ok'), ('batch=3', 'ok')])
    """

    results: list[OutputDiff] = field(default_factory=list)
    first_divergence: dict[str, str | None] = field(default_factory=dict)
    probes: list[ProbeResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every example output matched in every mode and no probe is a ``MISMATCH``."""
        return all(r.ok for r in self.results) and not any(p.failed for p in self.probes)

    def failures(self) -> list[OutputDiff]:
        """The example outputs that did not match."""
        return [r for r in self.results if not r.ok]

    def probe_failures(self) -> list[ProbeResult]:
        """The probes (the example's included) that ended ``MISMATCH``."""
        return [p for p in self.probes if p.failed]

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with the tables when anything differs."""
        if not self.ok:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        """The verdict, a row per example output, the first diverging module per mode, a row per probe."""
        lines = [_headline(self)]
        if self.results:
            lines += _table(self.results)
        for mode, where in self.first_divergence.items():
            if where is not None:
                lines.append(f"first divergence ({mode}): {where or '(root module)'}")
        if any(p.name != "example" for p in self.probes):
            lines += ["probes:", *_probe_table(self.probes)]
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
    probes: bool | str | Sequence[str] = True,
    length_delta: int = 3,
    spatial: bool = False,
) -> CheckReport:
    """Run ``reference`` and ``candidate`` on the example and on probes beyond it; compare every output.

    Each mode in ``modes`` ("eval", "train") runs deep copies of both modules under
    ``torch.no_grad()``, with ``torch.manual_seed(seed)`` before every call (the caller's
    RNG state and models are left as they were). Inputs are cloned per call, so in-place
    ops cannot leak from one model's run into the other's. A tensor output matches when
    ``max |ref - cand| <= atol + rtol * max |ref|`` (defaults ``1e-7`` and ``1e-5``);
    other leaves must compare equal, and both outputs must have the same structure.
    On a mismatch, ``first_divergence[mode]`` names the first submodule whose output differs.
    Exceptions raised by either model on the example inputs propagate, except a train-mode
    BatchNorm fed one value per channel (a batch of one): a ``CheckError`` says so and what to do.

    ``probes`` picks the kinds to run, any of ``("example", "batch", "length", "padding",
    "repeat")`` or a comma-separated string of them; ``True`` (default) runs all, ``False``
    the example only. ``length_delta`` is how much longer the ``length`` probe makes token
    inputs; ``spatial=True`` also grows dims 2+ of float inputs of rank >= 3 by it.

    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    >>> check(net, copy.deepcopy(net), (torch.randn(2, 4),)).ok
    True
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"check: unknown mode(s) {unknown}; use any of {list(MODES)}")
    kinds = probe_kinds(probes)
    tol = Tolerance(DEFAULT_ATOL if atol is None else atol, DEFAULT_RTOL if rtol is None else rtol)
    inputs: Inputs = (tuple(args), dict(kwargs or {}))
    plans = make_probes(reference, *inputs, kinds, seed=seed, length_delta=length_delta, spatial=spatial)
    report = CheckReport()
    for mode in modes:
        if "example" in kinds:
            report.probes.append(_example(report, reference, candidate, mode, inputs, tol, seed))
        report.probes += [_probe(reference, candidate, plan, mode, tol, seed) for plan in plans]
    return report


def _example(report: CheckReport, ref: nn.Module, cand: nn.Module, mode: str, inputs: Inputs, tol: Tolerance,
             seed: int) -> ProbeResult:
    """Compare on the example inputs (errors propagate); fills ``report.results`` and ``first_divergence``."""
    ref_out, cand_out = _run_example(ref, "reference", mode, inputs, seed), _run_example(cand, "candidate", mode,
                                                                                         inputs, seed)
    results = compare_outputs(mode, ref_out, cand_out, tol)
    report.results.extend(results)
    ok = all(r.ok for r in results)
    report.first_divergence[mode] = None if ok else _first_divergence(ref, cand, mode, inputs, seed, tol)
    return _summary(mode, "example", results, report.first_divergence[mode])


def _run_example(module: nn.Module, which: str, mode: str, inputs: Inputs, seed: int) -> Any:
    """One run on the example; a train-mode BatchNorm fed a batch of one is a ``CheckError`` saying so."""
    try:
        return run_copy(module, mode, inputs, seed)[1][0]
    except ValueError as e:
        error = train_batch_error(module, which, inputs, seed) if mode == "train" else None
        if error is None:
            raise
        raise error from e


def _probe(ref: nn.Module, cand: nn.Module, probe: Probe, mode: str, tol: Tolerance, seed: int) -> ProbeResult:
    """Run one probe: skipped when the reference raises, refused on the candidate's ``ValueError``."""
    if probe.skip:
        return ProbeResult(mode, probe.name, SKIPPED, reason=probe.skip)
    inputs: Inputs = (probe.args, probe.kwargs)
    run = run_both(ref, cand, mode, inputs, seed, probe.calls)
    if run.failure is not None:
        return ProbeResult(mode, probe.name, run.failure[0], reason=run.failure[1])
    per_call = [compare_outputs(mode, r, c, tol, _prefix(i, probe.calls)) for i, (r, c) in
                enumerate(zip(run.ref, run.cand))]
    results = [r for rows in per_call for r in rows]
    if probe.calls > 1:
        results += _compare_state(mode, run.deltas, tol)
    bad = next((i for i, rows in enumerate(per_call) if not all(r.ok for r in rows)), None)
    where = None if bad is None else _first_divergence(ref, cand, mode, inputs, seed, tol, bad + 1)
    return _summary(mode, probe.name, results, where)


def _prefix(i: int, calls: int) -> str:
    """The path prefix of call ``i`` of ``calls``: none for a single call."""
    return "" if calls == 1 else f"call{i + 1}:"


def _summary(mode: str, name: str, results: list[OutputDiff], where: str | None) -> ProbeResult:
    """A probe's verdict from its output rows: largest differences, first failing output."""
    numbers = [r for r in results if not math.isnan(r.max_abs)]
    max_abs = max((r.max_abs for r in numbers), default=math.nan)
    max_rel = max((r.max_rel for r in numbers), default=math.nan)
    bad = [r for r in results if not r.ok]
    if not bad:
        return ProbeResult(mode, name, OK, max_abs, max_rel, results=results)
    reason = f"{len(bad)} of {len(results)} outputs differ: {bad[0].path}" + (
        f" ({bad[0].note})" if bad[0].note else "") + (", ..." if len(bad) > 1 else "")
    return ProbeResult(mode, name, MISMATCH, max_abs, max_rel, reason, results, where)


def _compare_state(mode: str, deltas: tuple[Deltas | None, Deltas | None], tol: Tolerance) -> list[OutputDiff]:
    """How each buffer changed over the calls, reference against candidate.

    Only when both name the same buffers; only buffers that changed on either side.
    """
    a, b = deltas
    if a is None or b is None or a.keys() != b.keys():
        return []
    changed = [k for k in a if a[k].shape != b[k].shape or bool(a[k].any()) or bool(b[k].any())]
    return [_compare_tensors(mode, f"state[{k!r}]", a[k], b[k], tol) for k in changed]


# ---------------------------------------------------------------------------- outputs


def compare_outputs(mode: str, ref: Any, cand: Any, tol: Tolerance, prefix: str = "") -> list[OutputDiff]:
    """One :class:`OutputDiff` per leaf of either output, in the reference's order; paths start with ``prefix``."""
    ref_flat, cand_flat = flatten(ref, prefix + "out"), dict(flatten(cand, prefix + "out"))
    results = [_compare_leaf(mode, path, value, cand_flat, tol) for path, value in ref_flat]
    seen = {path for path, _ in ref_flat}
    extra = [(path, value) for path, value in cand_flat.items() if path not in seen]
    results += [_missing(mode, path, None, value, "only in candidate") for path, value in extra]
    return results


def _compare_leaf(mode: str, path: str, ref: Any, cand_flat: dict[str, Any], tol: Tolerance) -> OutputDiff:
    """Compare the reference leaf at ``path`` with the candidate's leaf there. A transformers cache
    object is not compared: capture leaves it out of the emitted model (``frontends.cache_free``)."""
    if is_cache(ref) and (path not in cand_flat or is_cache(cand_flat[path])):
        return OutputDiff(mode, path, 0.0, 0.0, True, note="a key/value cache: not compared")
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
    return _cut(repr(value), limit)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- divergence


def _first_divergence(ref: nn.Module, cand: nn.Module, mode: str, inputs: Inputs, seed: int, tol: Tolerance,
                      calls: int = 1) -> str | None:
    """The first submodule (in the reference's finishing order) whose output differs in the last of ``calls``."""
    ref_calls, cand_calls = record(ref, mode, inputs, seed, calls), dict(record(cand, mode, inputs, seed, calls))
    for key, ref_flat in ref_calls:
        cand_flat = cand_calls.get(key)
        if cand_flat is not None and _diverges(ref_flat, cand_flat, tol):
            return key[0]
    return None


def _diverges(ref: Flat, cand: Flat, tol: Tolerance) -> bool:
    """True when two recorded module outputs differ in structure, shape, or beyond tolerance."""
    if [p for p, _ in ref] != [p for p, _ in cand]:
        return True
    return not all(_compare_tensors("", p, a, b, tol).ok for (p, a), (_, b) in zip(ref, cand, strict=True))


# ---------------------------------------------------------------------------- table


def _table(results: list[OutputDiff]) -> list[str]:
    """Rows of the output table, columns padded to their widest cell."""
    header = ["mode", "output", "ref shape", "cand shape", "max abs", "max rel", "status"]
    return _columns([header, *[_row(r) for r in results]])


def _row(r: OutputDiff) -> list[str]:
    """One table row, with its note (why it failed, or why it was not compared)."""
    status = ("ok" if r.ok else "FAIL") + (f" ({r.note})" if r.note else "")
    return [r.mode, r.path, _fmt_shape(r.ref_shape), _fmt_shape(r.cand_shape), _num(r.max_abs), _num(r.max_rel), status]


def _probe_table(probes: list[ProbeResult]) -> list[str]:
    """Rows of the probe table: mode, probe, largest differences, status and why."""
    header = ["mode", "probe", "max abs", "max rel", "status", "detail"]
    rows = [header]
    for p in probes:
        where = "" if p.first_divergence is None else f"; first divergence: {p.first_divergence or '(root module)'}"
        rows.append([p.mode, p.name, _num(p.max_abs), _num(p.max_rel), p.status, p.reason + where])
    return _columns(rows)


def _columns(rows: list[list[str]]) -> list[str]:
    """Rows joined into lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _headline(report: CheckReport) -> str:
    """``check: ok`` (with counts of refused/skipped probes) or ``check: FAILED (what failed)``."""
    if report.ok:
        quiet = [f"{n} {s}" for s in (REFUSED, SKIPPED) if (n := sum(p.status == s for p in report.probes))]
        return "check: ok" + (f" (probes: {', '.join(quiet)})" if quiet else "")
    parts = []
    if bad := len(report.failures()):
        parts.append(f"{bad} of {len(report.results)} outputs differ")
    if probes := [f"{p.name} ({p.mode})" for p in report.probe_failures() if p.name != "example"]:
        more = f", and {len(probes) - 4} more" if len(probes) > 4 else ""
        parts.append(f"probe(s) MISMATCH: {', '.join(probes[:4])}{more}")
    return f"check: FAILED ({'; '.join(parts)})"


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    """``[2, 10]`` for a shape, ``-`` for none."""
    return "-" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _num(x: float) -> str:
    """A difference in short scientific notation (``-`` when not comparable)."""
    return "-" if math.isnan(x) else f"{x:.2e}"

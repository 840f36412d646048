"""Pipelines: a text form shared by Python and the CLI, and ``run`` with a change report.

    swap-activation{from=relu to=silu},fuse-conv-bn

Passes are separated by commas; options go in braces as ``key=value`` separated by
spaces. ``from`` is spelled ``from_`` in Python (a keyword).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import keyword
import re
import threading
import types
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Union, get_type_hints

from torchgraft.errors import IRError, SelectorWarning, TorchgraftError
from torchgraft.ir.model import Model
from torchgraft.passes.base import Pass, PassReport
from torchgraft.passes.registry import REGISTRY
from torchgraft.passes.rewrite import count_params
from torchgraft.retype import retype


class PipelineError(TorchgraftError, ValueError):
    """A pipeline names an unknown pass or option, or an option value of the wrong type."""


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def _field_name(key: str) -> str:
    """The Python field of a text option: a Python keyword takes a trailing ``_`` (``from_``, ``as_``)."""
    return key + "_" if keyword.iskeyword(key) else key.replace("-", "_")


def option_name(field: str) -> str:
    """The text form of a pass field (``from_`` -> ``from``)."""
    return field[:-1] if field.endswith("_") and keyword.iskeyword(field[:-1]) else field


def _convert(value: str, hint: Any, where: str) -> Any:
    if isinstance(hint, (types.UnionType,)) or typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value in ("none", "None"):
            return None
        hint = args[0] if len(args) == 1 else str
    if hint not in (str, int, float, bool):
        raise PipelineError(f"{where}: this option takes a Python object ({getattr(hint, '__name__', hint)}), "
                            "which has no text form; set it on the pass object in Python")
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float):
            return hint(value)
    except ValueError:
        raise PipelineError(f"{where}: {value!r} is not a valid {hint.__name__}") from None
    return value


def make_pass(name: str, options: dict[str, str]) -> Pass:
    """Instantiate a registered pass from text options (converted to the fields' types)."""
    if name not in REGISTRY:
        raise PipelineError(f"unknown pass {name!r}; registered passes: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in options.items():
        fname = _field_name(key)
        if fname not in fields:
            known = ", ".join(sorted(option_name(f) for f in fields)) or "none"
            raise PipelineError(f"pass {name!r} has no option {key!r}; its options: {known}")
        kwargs[fname] = _convert(value, hints[fname], f"{name}{{{key}=...}}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"{name}: {e}") from None


def parse_pipeline(text: str) -> list[Pass]:
    """``"swap-activation{from=relu to=silu},fuse-conv-bn"`` → the pass objects."""
    passes, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise PipelineError(f"cannot parse pipeline at {text[pos:]!r}; expected name{{key=value ...}}, "
                                "passes separated by commas")
        opts: dict[str, str] = {}
        for part in (m.group(2) or "").split():
            if "=" not in part:
                raise PipelineError(f"option {part!r} of {m.group(1)!r} must be key=value")
            k, v = part.split("=", 1)
            opts[k] = v
        passes.append(make_pass(m.group(1), opts))
        pos = m.end()
    return passes


def pipeline_text(passes: list[Pass]) -> str:
    """The text form of a list of passes (options that differ from the defaults only)."""
    out = []
    for p in passes:
        opts = [f"{option_name(f.name)}={getattr(p, f.name)}"
                for f in dataclasses.fields(p)  # type: ignore[arg-type]
                if getattr(p, f.name) != f.default]
        out.append(p.name + (f"{{{' '.join(opts)}}}" if opts else ""))
    return ",".join(out)


@dataclass
class PassResult:
    """The rewritten model and one report per pass."""

    model: Model
    reports: list[PassReport] = field(default_factory=list)

    @property
    def report(self) -> str:
        """All pass reports as text."""
        return "\n".join(str(r) for r in self.reports)


def _retyped(before: Model, after: Model, name: str, notes: list[str]) -> Model:
    """``after`` with its types re-inferred; an error naming the pass if the pass broke them.

    Models that never replayed on the meta device (data-dependent code) keep their types, and
    ``notes`` says so; it also says when the replay ran the emitted code (``retype``).
    """
    try:
        return retype(after, notes)
    except IRError as e:
        try:
            retype(before)
        except Exception:  # noqa: BLE001 - the model did not replay before the pass either
            notes.append(f"types not re-inferred: the model did not replay on meta inputs before the pass "
                         f"either ({e})")
            return after
        raise TorchgraftError(f"pass {name} broke the model's types: {e}") from e


def _check_selector(model: Model, p: Pass, strict: bool) -> None:
    """Warn (or, when ``strict``, fail) when the pass's ``where=`` selects nothing in ``model``."""
    from torchgraft.passes.sites import select

    where = getattr(p, "where", None)
    if not isinstance(where, str) or where in ("", "*") or select(model, where):
        return
    msg = (f"{p.name}{{where={where}}} selects nothing in {model.name}; check the path or class name "
           f"(preview a selector with torchgraft.passes.select(model, {where!r}))")
    if strict:
        raise PipelineError(msg)
    warnings.warn(msg, SelectorWarning, stacklevel=3)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Automatic cyclic garbage collection paused (if it was on), and back on afterwards.

    The IR is acyclic (frozen dataclasses, freed by reference counting), but a pass and the retype
    allocate many objects, and each full collection scans every live object: the IR of a large
    model included. At 4,000 blocks that was 30% of ``run`` and what made it grow faster than the
    model. Nothing a pass computes depends on it; cyclic garbage made meanwhile is collected later.

    >>> with paused_gc():
    ...     gc.isenabled()
    False
    """
    with _GC_LOCK:  # pipelines in several threads: the first in pauses, the last out restores
        if not _GC_STATE["runs"]:
            _GC_STATE["was_enabled"] = gc.isenabled()
            gc.disable()
        _GC_STATE["runs"] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_STATE["runs"] -= 1
            if not _GC_STATE["runs"] and _GC_STATE["was_enabled"]:
                gc.enable()


CARRY_TYPES = True
"""Carry the types over a pass that proved its edits keep them (``Pass.types_kept``: swap-activation between
elementwise activations on floating-point values) instead of re-inferring them; False always re-infers (tests
compare the two)."""

_GC_LOCK = threading.Lock()
_GC_STATE = {"runs": 0, "was_enabled": True}


def run(model: Model, pipeline: str | Pass | list[Pass], *, dry_run: bool = False,
        verify: bool = True, retype_after: bool = True, strict: bool = False) -> PassResult:
    """Run a pipeline (text or pass objects) over ``model``; ``ir.verify`` after every pass.

    After a pass that changed the model, its types are re-inferred by replaying it on the
    meta device (``retype_after``); a pass that breaks a shape fails there with the path.
    With ``dry_run=True`` the report says what would change and the model is returned unchanged.
    A ``where=`` selector that selects nothing warns (``SelectorWarning``); ``strict=True`` fails instead.
    """
    from torchgraft.ir.verify import verify as verify_model

    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else (
        [pipeline] if isinstance(pipeline, Pass) else list(pipeline))
    reports = []
    current = model
    params: int | None = None  # count_params(current), carried from one pass's report to the next
    with paused_gc():  # see paused_gc: full collections made long pipelines superlinear
        for p in passes:
            _check_selector(current, p, strict)
            new, matches = p.rewrite(current)
            retype_notes: list[str] = []
            if retype_after and new is not current and matches and not (CARRY_TYPES and p.types_kept(matches)):
                new = _retyped(current, new, p.name, retype_notes)
            if verify:
                try:
                    verify_model(new)
                except Exception as e:
                    raise TorchgraftError(f"pass {p.name} produced an invalid model: {e}") from e
            before_count = count_params(current) if params is None else params
            params = before_count if new is current or p.keeps_state else count_params(new)
            rep = PassReport(p.name, matches, params_before=before_count, params_after=params)
            notes = getattr(p, "notes", None)
            rep.notes = [*(notes(current) if callable(notes) else ()), *retype_notes]
            rep.skipped = p.skipped(current, new)
            before, after = set(current.weights), set(new.weights)
            renamed = p.key_map(current, new)
            rep.keys_renamed = renamed
            rep.keys_added = sorted(after - before - set(renamed.values()))
            rep.keys_removed = sorted(before - after - set(renamed))
            reports.append(rep)
            current = new
    return PassResult(model if dry_run else current, reports)

"""Running a flipped trace safely: the other branch runs on data it was not written for.

``frontends.guard_relax`` traces a forward again with a size comparison's outcome flipped. That run
executes a branch no input of this shape takes, so it must neither count when it only "worked" by
accident nor leave anything behind:

- an exception raised anywhere in the model's or library's code during the run, even one the forward
  catches (``try: x.view(n) ... except RuntimeError: pass``), fails the flip: on data that fits the
  branch it would not have been raised, and the caught path proves nothing;
- the run gets copies of the input tensors (a branch's ``x.mul_(0)`` must not write into the caller's
  example) and the module's tensors are put back afterwards (``restore_state``);
- plain Python state of the modules (their attributes, and one level into the dicts, lists, sets and
  objects those hold: a config's fields, ``self.cfg["mode"]``) is compared before and after; a run that
  changed it fails the flip, and the old values are put back in place. State deeper than that, and module
  globals, are not watched (``docs/faithful.md``).

>>> with flip_run(mod, args, kwargs) as (a, kw, outcome):   # doctest: +SKIP
...     traced = trace(a, kw)
>>> outcome.failed   # True when the run raised, even if caught, or changed Python state
"""

from __future__ import annotations

import contextlib
import sys
import sysconfig
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from torchgraft.frontends.state import restore_state
from torchgraft.frontends.symsize import _ours

_SKIP = ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
         "_state_dict_hooks", "_load_state_dict_pre_hooks", "_non_persistent_buffers_set")


_STDLIB = tuple(p for p in {sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib")} if p)
_CONTROL = (StopIteration, StopAsyncIteration, GeneratorExit)
"""Raised by every exhausted iterator: control flow, not a failure."""


def _outside(filename: str) -> bool:
    """Model or library code: not torchgraft's, not torch's, not Python's own library."""
    if _ours(filename) or filename.startswith("<frozen "):
        return False
    return not filename.startswith(_STDLIB) or "site-packages" in filename


@contextlib.contextmanager
def _raised() -> Iterator[list[str]]:
    """Every exception event in a frame of model or library code (not torch's, not ours), caught or not."""
    seen: list[str] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:  # noqa: ANN401
        if event == "exception" and not issubclass(arg[0], _CONTROL) and _outside(frame.f_code.co_filename):
            seen.append(f"{frame.f_code.co_filename}:{frame.f_lineno}: {arg[0].__name__}")
        return local

    def call(frame: FrameType, event: str, arg: Any) -> Any:  # noqa: ANN401
        frame.f_trace_lines = False  # only exception events, not one per line
        return local

    old = sys.gettrace()
    sys.settrace(call)
    try:
        yield seen
    finally:
        sys.settrace(old)


def _contents(value: object) -> list[Any] | None:
    """A shallow copy to compare by identity: a dict's items, a list's or set's members, an object's fields."""
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, set, frozenset, tuple)):
        return list(value)
    fields = getattr(value, "__dict__", None)
    return list(fields.items()) if isinstance(fields, dict) and not isinstance(value, (nn.Module, type)) else None


def _snapshot(mod: nn.Module) -> list[tuple[object, list[Any]]]:
    """(owner, contents) for every module and every container or object one of its attributes holds."""
    out: list[tuple[object, list[Any]]] = []
    for m in mod.modules():
        attrs = [(k, v) for k, v in m.__dict__.items() if k not in _SKIP]
        out.append((m, attrs))
        for _, v in attrs:
            inner = None if isinstance(v, (torch.Tensor, nn.Module)) else _contents(v)
            if inner is not None:
                out.append((v, inner))
    return out


def _now(owner: object) -> list[Any] | None:
    if isinstance(owner, nn.Module):
        return [(k, v) for k, v in owner.__dict__.items() if k not in _SKIP]
    return _contents(owner)


def _same(before: list[Any], after: list[Any] | None) -> bool:
    """Same members, compared by identity (keys of pairs by equality)."""
    if after is None or len(before) != len(after):
        return False
    for x, y in zip(before, after):
        pairs = isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y) == 2
        if (pairs and (x[0] != y[0] or x[1] is not y[1])) or (not pairs and x is not y):
            return False
    return True


def _put_back(owner: object, saved: list[Any]) -> None:
    """Restore ``owner``'s contents in place from what ``_snapshot`` took."""
    if isinstance(owner, nn.Module):
        for k in [k for k in owner.__dict__ if k not in _SKIP]:
            del owner.__dict__[k]
        owner.__dict__.update(saved)
    elif isinstance(owner, (dict, set)):
        owner.clear()
        owner.update(saved)  # type: ignore[arg-type]
    elif isinstance(owner, list):
        owner[:] = saved
    elif isinstance(getattr(owner, "__dict__", None), dict):
        owner.__dict__.clear()
        owner.__dict__.update(saved)


class FlipOutcome:
    """Set when a ``flip_run`` ends: ``failed`` (it raised, even if caught, or changed Python state) and why."""

    def __init__(self) -> None:
        self.failed = False
        self.why: list[str] = []


@contextlib.contextmanager
def flip_run(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
             ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], FlipOutcome]]:
    """Copies of the inputs to run a flipped trace on, and its outcome (read it after the block): failed when
    the run raised (caught or not) in model or library code, or changed the modules' Python state (which is
    put back); the modules' tensors are put back in any case."""
    copies = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), (args, kwargs))
    before = _snapshot(mod)
    outcome = FlipOutcome()
    try:
        with restore_state(mod), _raised() as seen:
            yield copies[0], copies[1], outcome
    finally:
        changed = [(owner, saved) for owner, saved in before if not _same(saved, _now(owner))]
        for owner, saved in changed:
            _put_back(owner, saved)
        outcome.why = [*seen, *(f"changed {type(o).__name__} state" for o, _ in changed)]
        outcome.failed = bool(outcome.why)


__all__ = ["FlipOutcome", "flip_run"]

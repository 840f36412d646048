"""Several example calls for one capture: ``capture(model, examples=[(args, kwargs), ...])``.

One example shows one path through the model. Capture traces the first; the others are
recorded too (an optional argument counts as "always None" or "always given" only if it is
so in every example), and once the IR is built each further example is replayed through it
and compared with the original. A module whose examples differ in which optional arguments
are None, or where a further example trips a guard (``ExampleDiverged``), has its forward
source copied instead of traced, so the emitted class keeps every path; capture then starts
again. If that source cannot be copied, or an example gives other outputs, capture fails
loudly, naming the example and what differs: the captured model is only ever returned when
it reproduces every example it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from torchgraft.errors import CaptureError

Example = tuple[tuple[Any, ...], dict[str, Any]]


class ExampleDiverged(CaptureError):
    """An example tripped a guard of the module at ``path``: capture copies that module's source and retries."""


def normalise(args: Any, kwargs: dict[str, Any] | None, examples: Sequence[Any] | None) -> list[Example]:
    """Every example as an ``(args tuple, kwargs dict)`` pair, the ``args``/``kwargs`` call first (if given)."""
    out: list[Example] = []
    args = args if isinstance(args, tuple) else (args,)
    if args or kwargs:
        out.append((args, dict(kwargs or {})))
    for i, ex in enumerate(examples or ()):
        if not (isinstance(ex, (tuple, list)) and len(ex) == 2 and isinstance(ex[1], (dict, type(None)))):
            raise CaptureError(f"examples[{i}] must be an (args, kwargs) pair, e.g. ((x,), {{'mask': m}}); "
                               f"got {type(ex).__name__}")
        a = ex[0] if isinstance(ex[0], tuple) else (tuple(ex[0]) if isinstance(ex[0], list) else (ex[0],))
        out.append((a, dict(ex[1] or {})))
    if not out:
        out.append(((), {}))
    return out


def tripped_guard(e: BaseException) -> tuple[str | None, BaseException]:
    """(module path, cause) when a replay failed because a guard of that module refused the call
    (the innermost ``CaptureError`` names the module, its cause is the guard's ``ValueError``)."""
    cause: BaseException = e
    path = getattr(e, "path", None)
    while isinstance(cause, CaptureError) and cause.__cause__ is not None:
        path = cause.path
        cause = cause.__cause__
    guard = isinstance(cause, ValueError) and not isinstance(cause, CaptureError)
    return (path if guard else None), cause


def _outputs_match(a: Any, b: Any) -> str:
    """"" when two outputs are equal within float tolerance, else what differs."""
    fa, fb = tree_flatten(a)[0], tree_flatten(b)[0]
    if len(fa) != len(fb):
        return f"{len(fb)} outputs instead of {len(fa)}"
    for i, (x, y) in enumerate(zip(fa, fb)):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            try:
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
            except AssertionError as e:
                return f"output {i}: {str(e).splitlines()[0]}"
        elif isinstance(x, (bool, int, float, str, type(None))) and x != y:
            return f"output {i}: {y!r} instead of {x!r}"
    return ""


def validate(model: nn.Module, examples: list[Example], replay: Callable[[tuple[Any, ...], dict[str, Any]], Any],
             restore: Callable[[], Any]) -> None:
    """Replay the captured IR (``replay``) on every example after the first and compare with ``model``.

    ``restore`` is a context-manager factory that puts the model's state back after each run."""
    for i, (args, kwargs) in enumerate(examples[1:], start=1):
        with torch.no_grad(), restore():
            expected = model(*args, **kwargs)
        try:
            with torch.no_grad(), restore():
                got = replay(args, kwargs)
        except Exception as e:  # noqa: BLE001 - a guard's ValueError, or a shape the trace fixed
            path, cause = tripped_guard(e)
            if path is not None:
                raise ExampleDiverged(f"example {i} trips a guard in {path or '<root>'}: {cause}", path) from e
            raise CaptureError(f"example {i} takes a path the first example did not, and torchgraft keeps one "
                               f"path per module: {type(cause).__name__}: {cause}. Capture with the first "
                               "example showing the most general call (masks with padding, every optional "
                               "argument given), or capture each kind of call separately.") from e
        diff = _outputs_match(expected, got)
        if diff:
            raise CaptureError(f"example {i}: the captured model differs from the original ({diff}); "
                               "capture with that example first, or capture each kind of call separately")


__all__ = ["Example", "ExampleDiverged", "normalise", "tripped_guard", "validate"]

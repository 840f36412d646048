"""A tiny progress display for long work (capturing big models, sweeping many): no dependencies.

It draws one line on stderr, and only when stderr is a terminal; otherwise it is silent,
so logs and pipes stay clean. ``TORCHGRAFT_PROGRESS=0`` turns it off, ``=1`` forces it on.

::

    with step("capturing resnet50"):          # a spinner with the elapsed time
        model = torchgraft.capture(net, args)

    for name in track(names, "sweeping"):      # a bar: sweeping [#####.....] 5/10 3.1s
        ...
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

T = TypeVar("T")

_SPIN = "|/-\\"
_BAR = 24


def enabled_for(stream: IO[str]) -> bool:
    """Whether progress should be drawn on ``stream``: a terminal, unless TORCHGRAFT_PROGRESS says otherwise."""
    forced = os.environ.get("TORCHGRAFT_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


class Progress:
    """One line of progress: a bar when ``total`` is known, a spinner with elapsed time otherwise.

    Use as a context manager (``with Progress("saving") as p: ... p.update()``) or iterate
    over ``Progress(label, iterable=items)``. The line is cleared when the work ends;
    ``leave=True`` keeps a final ``label: done in 1.2s`` line instead.
    """

    def __init__(self, label: str, total: int | None = None, *, iterable: Iterable[Any] | None = None,
                 stream: IO[str] | None = None, enabled: bool | None = None, leave: bool = False,
                 interval: float = 0.1) -> None:
        self.label = label
        self.iterable = iterable
        self.total = total if total is not None or iterable is None else _len(iterable)
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled_for(self.stream) if enabled is None else enabled
        self.leave = leave
        self.interval = interval
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the work started."""
        return time.perf_counter() - self._start

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(ok=exc_type is None)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("Progress was made without an iterable; use it as a context manager")
        with self:
            for item in self.iterable:
                yield item
                self.update()

    def update(self, n: int = 1, label: str | None = None) -> None:
        """Count ``n`` more units of work (and optionally change the label)."""
        self.count += n
        if label is not None:
            self.label = label
        self._draw()

    def close(self, ok: bool = True) -> None:
        """Stop drawing; clear the line (or leave a summary line when ``leave``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.enabled:
            return
        with self._lock:
            end = f"{self.label}: {'done' if ok else 'failed'} in {self.elapsed:.1f}s\n" if self.leave else ""
            self.stream.write("\r\x1b[K" + end)
            self.stream.flush()

    def text(self, frame: int = 0) -> str:
        """The line as drawn now (without control characters)."""
        secs = f"{self.elapsed:.1f}s"
        if not self.total:
            count = f" {self.count}" if self.count else ""
            return f"{self.label} {_SPIN[frame % len(_SPIN)]}{count} {secs}"
        done = min(self.count, self.total)
        filled = int(_BAR * done / self.total)
        return f"{self.label} [{'#' * filled}{'.' * (_BAR - filled)}] {done}/{self.total} {secs}"

    def _tick(self) -> None:
        frame = 0
        while not self._stop.wait(self.interval):
            frame += 1
            self._draw(frame)

    def _draw(self, frame: int = 0) -> None:
        if not self.enabled:
            return
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
        with self._lock:
            self.stream.write("\r\x1b[K" + self.text(frame)[:width])
            self.stream.flush()


def _len(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def step(label: str, **options: Any) -> Progress:
    """A spinner for one long step: ``with step("capturing"): ...``."""
    return Progress(label, **options)


def track(items: Iterable[T], label: str, total: int | None = None, **options: Any) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar: ``for m in track(models, "sweeping"): ...``."""
    bar = Progress(label, total, iterable=items, **options)
    return iter(bar)

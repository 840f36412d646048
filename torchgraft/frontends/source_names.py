"""The variable of the model's own source each recorded value was assigned to (a naming hint).

While a forward is traced (torch.fx or the fallback recorder), each recorded op calls
``observe()`` first: the model frames on the stack (outside torch and torchgraft, up to the
forward's own frame) and the statement each one is at. When a frame has moved on to another
statement, or returned, the statement it left is done: if it was an assignment
(``q_embed = (q * cos) + ...``, ``cos, sin = ...``, ``x: Tensor = ...``), each target name whose
local *now holds* a value recorded during that statement names that value. The local's value is
read from the frame itself, so a name is never given to an intermediate (``q * cos``) nor to a
value that only passed through; the source text only says which names a statement assigns
(parsed with ``ast``, never run). A statement spanning several lines is found from any of them.

Names from a helper function (``hidden_states`` inside ``repeat_kv``) that equal one of the
forward's parameters are dropped: in the emitted forward that name belongs to the parameter.
The innermost frame's name wins (``q_embed`` in ``apply_rotary_pos_emb`` over ``query_states``
in its caller). Hints carry no meaning: the emitter still keeps names unique and valid.

>>> names = SourceNames(stop=None, forward=None, lookup=lambda v: None)
>>> names.hints
{}
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import CodeType, FrameType
from typing import Any

from torchgraft.frontends.symsize import _ours
from torchgraft.ir.graph import Op


@functools.lru_cache(maxsize=64)
def _parsed(filename: str, text: str) -> dict[int, tuple[int, tuple[str, ...]]]:
    """Line -> (first line of the innermost statement holding it, the names it assigns)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    out: dict[int, tuple[int, tuple[str, ...]]] = {}
    for node in ast.walk(tree):  # breadth first: inner statements overwrite the ones holding them
        if isinstance(node, ast.stmt):
            end = node.end_lineno or node.lineno
            if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr, ast.Return, ast.AugAssign)):
                end = _header_end(node)
            entry = (node.lineno, _targets(node))
            for line in range(node.lineno, end + 1):
                out[line] = entry
    return out


def _header_end(node: ast.stmt) -> int:
    """The last line of a compound statement's header (``if ...:``), its whole span when it has no body."""
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
        return max(node.lineno, body[0].lineno - 1)
    return node.end_lineno or node.lineno


def _targets(node: ast.stmt) -> tuple[str, ...]:
    """The plain names a statement assigns: ``a = ...``, ``a, b = ...``, ``a: T = ...``; () otherwise."""
    if isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
        return (node.target.id,)
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return ()
    target = node.targets[0]
    if isinstance(target, ast.Name):
        return (target.id,)
    if isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Name) for e in target.elts):
        return tuple(e.id for e in target.elts)  # type: ignore[attr-defined]
    return ()


@functools.lru_cache(maxsize=1024)
def statements(code: CodeType) -> dict[int, tuple[int, tuple[str, ...]]]:
    """Line -> (statement's first line, names it assigns) for the file ``code`` comes from."""
    lines = linecache.getlines(code.co_filename)
    return _parsed(code.co_filename, "".join(lines)) if lines else {}


def forward_code(fn: object) -> CodeType | None:
    """The code object of a forward, through decorators (``functools.wraps``)."""
    try:
        inner = inspect.unwrap(fn)  # type: ignore[arg-type]
    except ValueError:
        return None
    return getattr(inner, "__code__", None)


class SourceNames:
    """Collects ``hints``: value name -> source variable, as ops are recorded (see the module doc).

    ``stop``: the frame the trace was started from (frames from there out are not the model's);
    ``forward``: the traced forward's code; ``lookup``: the recorded value's name for a local's
    value (``op.key`` for an item of op's result, named later: see ``rename``), or None;
    ``params``: the forward's parameter names (helpers' names that equal one are dropped).
    """

    def __init__(self, stop: FrameType | None, forward: CodeType | None, lookup: Callable[[Any], str | None],
                 params: frozenset[str] = frozenset()) -> None:
        self.stop, self.forward, self.lookup, self.params = stop, forward, lookup, params
        self.hints: dict[str, str] = {}
        self.serial: dict[str, int] = {}
        self.count = 0
        self.open: dict[int, tuple[FrameType, int, int, int]] = {}  # id(frame) -> (frame, statement, serial, lasti)

    def created(self, name: str) -> None:
        """A value named ``name`` was just recorded."""
        self.serial[name] = self.count
        self.count += 1

    def rename(self, key: str, name: str) -> None:
        """The value ``lookup`` called ``key`` (``op.0``: an item not read yet) is now recorded as ``name``."""
        if key in self.hints and name not in self.hints:
            self.hints[name] = self.hints.pop(key)

    def observe(self) -> None:
        """Called before an op is recorded: finish the statements the model's frames have left."""
        stack = self._frames()
        ids = {id(f) for f, _ in stack}
        for key in [k for k in reversed(self.open) if k not in ids]:  # returned: innermost first
            self._finish(*self.open.pop(key)[:3])
        for frame, line in stack:
            prev = self.open.get(id(frame))
            start = self.count
            if prev is not None and (prev[1] != line or frame.f_lasti < prev[3]):  # moved on, or looped back
                self._finish(*prev[:3])
            elif prev is not None:
                start = prev[2]
            self.open[id(frame)] = (frame, line, start, frame.f_lasti)

    def finish(self) -> None:
        """The forward returned: finish every open statement (innermost first) and let go of the frames."""
        for key in list(reversed(self.open)):
            self._finish(*self.open.pop(key)[:3])
        self.stop = None

    def _frames(self) -> list[tuple[FrameType, int]]:
        """(frame, first line of its current statement) of the model's frames, innermost first; none
        unless the forward's own frame is found below ``stop`` (an op recorded outside it)."""
        out: list[tuple[FrameType, int]] = []
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame is not self.stop and self.forward is not None:
            code = frame.f_code
            if not _ours(code.co_filename):
                stmt = statements(code).get(frame.f_lineno)
                if stmt is not None:
                    out.append((frame, stmt[0]))
            if code is self.forward:
                return out
            frame = frame.f_back
        return []

    def _finish(self, frame: FrameType, line: int, start: int) -> None:
        names = statements(frame.f_code).get(line, (0, ()))[1]
        if not names:
            return
        own = frame.f_code is self.forward
        local = frame.f_locals
        for var in names:
            if var == "self" or var.startswith("_") or (not own and var in self.params) or var not in local:
                continue
            value = self.lookup(local[var])
            if value is not None and self.serial.get(value.partition(".")[0], -1) >= start and value not in self.hints:
                self.hints[value] = var


def with_hints(ops: Iterable[Op], hints: dict[str, str]) -> tuple[Op, ...]:
    """``ops`` with ``source_var`` set from ``hints`` (op name -> source variable)."""
    return tuple(replace(op, source_var=hints[op.name]) if op.name in hints else op for op in ops)

"""What copying a helper function's source costs only once per function (capture speed).

Each capture copies the helper functions its forwards call (``frontends.helpers``): reading the
source (``inspect.getsource`` tokenizes the file from the function's first line), walking the parsed
tree for the globals it reads, and writing it back (``ast.unparse``) come to a few milliseconds for a
function the size of swin's ``shifted_window_attention``, in every capture. Each of those is a function
of the source text alone, so it is kept here:

- ``function_source(code)``: the dedented source of a code object, as ``inspect.getsource`` gives it;
  reused while ``linecache`` holds the very same lines for its file (``linecache.checkcache`` drops
  them when the file changes on disk, as ``inspect`` itself does before reading);
- ``names(src, tree)``: the names a freshly parsed and prepared ``src`` reads, in order;
- ``unparsed(src, tree)``: ``ast.unparse`` of that prepared tree, for a caller that changed nothing
  in it since (``edits()`` counts the renames ``helpers`` makes; a caller compares it before and after).

>>> function_source(function_source.__code__).startswith("def function_source")
True
"""

from __future__ import annotations

import ast
import inspect
import linecache
import textwrap
import threading
import types
from typing import Any

_SOURCES: dict[types.CodeType, tuple[list[str], str]] = {}
_NAMES: dict[str, tuple[str, ...]] = {}
_UNPARSED: dict[tuple[str, str], str] = {}
_LIMIT = 4096  # entries per table; past that the table starts again

_LOCAL = threading.local()


def edits() -> int:
    """How many times a helper copy in this thread renamed something in a tree (``helpers._Rename``,
    ``_RenameName``): a caller compares it before and after (per thread: another capture's renames in
    another thread must not cancel out)."""
    return getattr(_LOCAL, "edits", 0)  # type: ignore[no-any-return]


def edited() -> None:
    """Count one rename (``edits``)."""
    _LOCAL.edits = edits() + 1


def function_source(code: types.CodeType) -> str:
    """``textwrap.dedent(inspect.getsource(code))``, reused while its file's lines are unchanged.
    Raises what ``inspect.getsource`` raises (OSError, TypeError)."""
    filename = code.co_filename
    linecache.checkcache(filename)  # what inspect.findsource does first: a changed file is read again
    entry: Any = linecache.cache.get(filename)
    kept = _SOURCES.get(code)
    if kept is not None and entry is not None and len(entry) == 4 and entry[2] is kept[0]:
        return kept[1]
    src = textwrap.dedent(inspect.getsource(code))
    entry = linecache.cache.get(filename)  # inspect read the file: these are the lines it used
    if entry is not None and len(entry) == 4 and inspect.getsourcefile(code) == filename:
        _put(_SOURCES, code, (entry[2], src))
    return src


def names(src: str, tree: ast.AST) -> tuple[str, ...]:
    """Every ``Name`` read or written in ``tree`` (parsed from ``src`` and prepared the same way each
    time), in order, without repeats."""
    found = _NAMES.get(src)
    if found is None:
        found = tuple(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)))
        _put(_NAMES, src, found)
    return found


def unparsed(src: str, name: str, tree: ast.FunctionDef) -> str:
    """``ast.unparse(tree)`` for ``tree`` parsed from ``src``, prepared the same way each time and renamed
    ``name``, unchanged since."""
    text = _UNPARSED.get((src, name))
    if text is None:
        text = ast.unparse(tree)
        _put(_UNPARSED, (src, name), text)
    return text


def _put(table: dict[Any, Any], key: Any, value: Any) -> None:
    if len(table) >= _LIMIT:
        table.clear()
    table[key] = value


__all__ = ["edited", "edits", "function_source", "names", "unparsed"]

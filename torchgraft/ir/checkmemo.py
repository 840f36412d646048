"""Which IR nodes a check already found clean: a memo by object identity, bounded.

IR nodes are frozen, and an edit returns a new tree that shares every unchanged subtree with the old
one. A check whose result depends only on one node's own fields (and a context, such as the model's
helpers) need not run again on a node it passed before: ``verify`` of a rewritten model re-checks
only the nodes the pass rebuilt.

Sound by construction: an entry holds the node itself, so its ``id`` cannot be reused by another
object while the entry lives, and a hit needs the very same object (``is``), never an equal one.
Only clean results are kept; a node with a problem is checked (and reported) every time. What a
check reads outside the node must be part of the context (or, like ``sys.modules`` for an
``Opaque``, keep the node out of the memo).

The memo keeps the nodes it holds alive; it is bounded (``LIMIT`` entries in all) and starts
afresh when full. ``clear()`` empties it; ``ENABLED = False`` turns it off (tests compare both).

>>> from torchgraft.ir.nodes import ChildRef
>>> node, table = ChildRef("x"), tables(("example",))
>>> table is not None and table.get(id(node)) is node
False
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

ENABLED = True
"""False: every check runs on every node (``tables`` returns None)."""

LIMIT = 1 << 17
"""Entries kept, over all contexts, before the memo starts afresh (a 4,000-block model needs ~8,000)."""

MAX_CONTEXTS = 32
"""Contexts (check, model helpers) kept before the memo starts afresh."""

_LOCK = threading.Lock()
_TABLES: dict[Hashable, dict[int, Any]] = {}


def tables(context: Hashable) -> dict[int, Any] | None:
    """The table ``id(node) -> node`` of the nodes found clean under ``context``; None when the memo is off
    or ``context`` cannot be a key (unhashable).

    A caller looks up with ``table.get(id(node)) is node`` and records a clean node with
    ``table[id(node)] = node``; a table of values computed from a node holds ``(node, value)`` and is read
    only when ``entry[0] is node``. The bound is enforced here, once per call, not on every insertion: one
    check of one model adds at most one entry per node of it.
    """
    global _TABLES
    if not ENABLED:
        return None
    try:
        hash(context)
    except TypeError:
        return None
    with _LOCK:
        if len(_TABLES) >= MAX_CONTEXTS or sum(len(t) for t in _TABLES.values()) >= LIMIT:
            _TABLES = {}  # a new dict: a table a running check still holds keeps working, then is dropped
        table = _TABLES.get(context)
        if table is None:
            table = _TABLES[context] = {}
        return table


def clear() -> None:
    """Forget every node (and let the trees the memo held be freed)."""
    global _TABLES
    with _LOCK:
        _TABLES = {}


def size() -> int:
    """Entries held, over all contexts."""
    with _LOCK:
        return sum(len(t) for t in _TABLES.values())

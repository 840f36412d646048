"""``inspect.signature``, cached per function (capture asks for the same forward's many times).

A cached signature is handed out again only while the function still has the same code,
defaults and annotations objects (checked by identity on every call); a function with
``__signature__`` or ``__wrapped__`` (whose signature comes from elsewhere) is never cached. The
cache holds functions weakly.

>>> def f(x, y=None): ...
>>> signature(f) is signature(f)
True
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

_FIELDS = ("__code__", "__defaults__", "__kwdefaults__", "__annotations__")
_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], inspect.Signature]] = weakref.WeakKeyDictionary()


def signature(fn: Any) -> inspect.Signature:
    """``inspect.signature(fn)``; for a plain function, the one computed before if nothing it reads changed."""
    if type(fn) is not type(signature) or "__signature__" in fn.__dict__ or "__wrapped__" in fn.__dict__:
        return inspect.signature(fn)  # builtins, classes, partials, wrappers: as inspect computes them
    state = tuple(getattr(fn, f, None) for f in _FIELDS)
    hit = _CACHE.get(fn)
    if hit is not None and len(hit[0]) == len(state) and all(a is b for a, b in zip(hit[0], state)):
        return hit[1]
    sig = inspect.signature(fn)
    _CACHE[fn] = (state, sig)
    return sig


__all__ = ["signature"]

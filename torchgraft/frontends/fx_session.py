"""One fx patch session for the many per-block traces of a capture.

``torch.fx.Tracer.trace`` patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` on
entry and restores them on exit. Setting an attribute of ``nn.Module`` invalidates the type
caches of every subclass (hundreds once torchvision or transformers is imported): that is
most of what tracing one small forward costs; wrapping every ``torch.fx.wrap``-ed function
anew is much of the rest. Inside ``session()`` the functions are wrapped once and the two
methods stay patched, once, with dispatchers marked the way fx marks its own patches, so each
``SessionTracer.trace`` skips patching them and the dispatchers route module calls and
attribute reads to whichever ``SessionTracer`` is tracing in the calling thread. With no tracer
active in that thread they call the originals, so other threads running models meanwhile see
ordinary modules (the tracer stack is per thread).

Only ``SessionTracer`` may trace inside a session: a plain ``fx.Tracer`` would find the
methods already patched and see its submodule calls inlined.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch.fx as fx
from torch import nn
from torch.fx import _symbolic_trace as fx_trace


class _Tracers(threading.local):
    """The ``SessionTracer``s tracing in the current thread, innermost last."""

    def __init__(self) -> None:
        self.stack: list[SessionTracer] = []


_ACTIVE = _Tracers()
_SESSION: list[Any] = []  # while a session is open: its patcher and fx's own registries of wrapped functions
_SESSION_LOCK = threading.RLock()  # one session at a time: a second thread's capture waits for the first


def _call(mod: nn.Module, *args: Any, **kwargs: Any) -> Any:
    active = _ACTIVE.stack
    if not active:
        return fx_trace._orig_module_call(mod, *args, **kwargs)
    return active[-1].session_call(mod, args, kwargs)


def _getattr(mod: nn.Module, attr: str) -> Any:
    value = fx_trace._orig_module_getattr(mod, attr)
    active = _ACTIVE.stack
    if not active:
        return value
    tracer = active[-1]
    return tracer.getattr(attr, value, tracer.param_proxies)


_call.__fx_already_patched = True  # type: ignore[attr-defined]
_getattr.__fx_already_patched = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Patch ``nn.Module.__call__``/``__getattr__`` once for every trace inside (re-entrant).

    One session at a time in the process: a capture in a second thread waits here for the first
    one's session to close. Threads that only run models never wait; they see the originals."""
    with _SESSION_LOCK:
        if _SESSION:  # the lock is ours, so this is our own session: nested
            yield
            return
        saved = nn.Module.__dict__["__call__"], nn.Module.__dict__["__getattr__"]
        fns, methods = fx_trace._wrapped_fns_to_patch, fx_trace._wrapped_methods_to_patch
        with fx_trace._new_patcher() as patcher:
            fx_trace._patch_wrapped_functions(patcher)  # torch.fx.wrap()ed functions: once, not per trace
            fx_trace._wrapped_fns_to_patch, fx_trace._wrapped_methods_to_patch = {}, []
            _SESSION[:] = [patcher, fns, methods]
            nn.Module.__call__ = _call  # type: ignore[method-assign]
            nn.Module.__getattr__ = _getattr  # type: ignore[method-assign]
            try:
                yield
            finally:
                nn.Module.__call__, nn.Module.__getattr__ = saved  # type: ignore[method-assign]
                _absorb_new_wraps()
                fx_trace._wrapped_fns_to_patch, fx_trace._wrapped_methods_to_patch = fns, methods
                _SESSION.clear()


def _absorb_new_wraps() -> None:
    """``torch.fx.wrap`` calls made during the session (a module imported by a forward):
    patch them for the traces to come and keep them registered after the session."""
    patcher, fns, methods = _SESSION
    if fx_trace._wrapped_fns_to_patch or fx_trace._wrapped_methods_to_patch:
        fx_trace._patch_wrapped_functions(patcher)
        fns.update(fx_trace._wrapped_fns_to_patch)
        methods.extend(fx_trace._wrapped_methods_to_patch)
        fx_trace._wrapped_fns_to_patch.clear()
        fx_trace._wrapped_methods_to_patch.clear()


class SessionTracer(fx.Tracer):
    """An fx Tracer that traces inside a ``session()`` (the open one, else its own)."""

    param_proxies: dict[str, Any]
    proxy_buffer_attributes = True  # a buffer read is a get_attr node, never its value baked into the graph

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """``fx.Tracer.trace``, with module calls and attribute reads routed here by the session (one is
        opened for this trace when none is): never fx's own patch, which every thread would see."""
        with session():
            self.param_proxies = {}
            _absorb_new_wraps()
            _ACTIVE.stack.append(self)
            try:
                return super().trace(root, concrete_args)
            finally:
                _ACTIVE.stack.pop()

    def session_call(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """What fx's own ``module_call_wrapper`` does: autowrap the callee's globals, then ``call_module``."""
        def forward(*a: Any, **kw: Any) -> Any:
            return fx_trace._orig_module_call(mod, *a, **kw)

        patcher = fx_trace.CURRENT_PATCHER
        if self._autowrap_function_ids and patcher is not None:
            fx_trace._autowrap_check(patcher, getattr(getattr(mod, "forward", mod), "__globals__", {}),
                                     self._autowrap_function_ids)
        return self.call_module(mod, forward, args, kwargs)


__all__ = ["SessionTracer", "session"]

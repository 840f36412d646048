"""Library-style helpers for tests/frontends/test_guard_relax.py: their size comparisons lie outside the
calling module's own file, so a concrete trace guards them instead of copying the forward's source."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def causal_flag(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """``q_len > 1 and mask is None``: with a mask given, False whatever the length."""
    return q.shape[1] > 1 and mask is None


def doubled_when_long(x: torch.Tensor) -> torch.Tensor:
    """A branch on a size that changes the result: its guard must stay."""
    return x * 2 if x.shape[1] > 1 else x


def either_long(x: torch.Tensor) -> torch.Tensor:
    """Two comparisons that matter only together: ``*2`` when either dim is above 1."""
    p = x.shape[0] > 1
    q = x.shape[1] > 1
    return x * 2 if p or q else x


def positions(x: torch.Tensor) -> torch.Tensor:
    """transformers' masking_utils: position ids ``(1, T)``, expanded to the batch only when it differs."""
    pos = torch.arange(x.shape[1]).unsqueeze(0)
    if x.shape[0] != pos.shape[0]:
        pos = pos.expand(x.shape[0], -1)
    return pos


def passthrough(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator like transformers' ``@auto_docstring``/``@can_return_tuple``: the forward it wraps
    cannot have its source copied, so examples that take different paths must merge as traces."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        return fn(*args, **kwargs)
    return wrapper


def positions_named(x: torch.Tensor) -> torch.Tensor:
    """``positions`` as transformers writes it: the size in a name, the ``if`` only rebinding the expand."""
    batch_size = x.shape[0]
    pos = torch.arange(x.shape[1]).unsqueeze(0)
    if batch_size != pos.shape[0]:
        pos = pos.expand(batch_size, -1)
    return pos


def positions_else(x: torch.Tensor) -> torch.Tensor:
    """Like ``positions_named`` but the other branch does something too: the source proves nothing."""
    batch_size = x.shape[0]
    pos = torch.arange(x.shape[1]).unsqueeze(0)
    if batch_size != pos.shape[0]:
        pos = pos.expand(batch_size, -1)
    else:
        pos = pos + 1
    return pos


def caught_view(x: torch.Tensor) -> torch.Tensor:
    """Another branch that raises on data of the other shape and is caught: its flip proves nothing."""
    if x.shape[0] == 1:
        try:
            return x.view(x.shape[1]).unsqueeze(0) * 2
        except RuntimeError:
            pass
    return x


def mode_flag(cfg: dict[str, str], x: torch.Tensor) -> torch.Tensor:
    """A branch that changes Python state the rest of the forward reads."""
    if x.shape[1] > 100:
        cfg["mode"] = "alt"
    return x * 2 if cfg["mode"] == "alt" else x


def zero_when_wide(x: torch.Tensor) -> torch.Tensor:
    """A branch that writes into its input."""
    if x.shape[1] > 100:
        x.mul_(0)
    return x + 1


def all_but_last(x: torch.Tensor) -> torch.Tensor:
    """``int(n)`` leaves the symbolic world: the size it came from is pinned."""
    n = int(x.shape[1])
    return x[:, : n - 1]


def doubled_above_half(x: torch.Tensor) -> torch.Tensor:
    """A size compared with a float."""
    return x * 2 if x.shape[1] > 1.5 else x


def scaled_by_layout(x: torch.Tensor) -> torch.Tensor:
    """A branch on ``is_contiguous()``: ``x.t()`` of a (1, T) tensor is contiguous, of a (2, T) one not."""
    y = x.t()
    return y * 2 if y.is_contiguous() else y * 3

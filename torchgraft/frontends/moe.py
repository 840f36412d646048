"""Mixture-of-experts layers of transformers (Mixtral, Qwen2-MoE, ...): expert dispatch as plain torch.

transformers picks an experts kernel per platform (``config._experts_implementation``: ``grouped_mm``
with a custom-op fallback, ``batched_mm``, or its eager loop over the experts a batch hits, which is
Python driven by tensor values). None of them can be written back as plain torch that serves every
input. During capture the model's experts run ``expert_loop`` instead: the same computation as
transformers' eager loop, over *every* expert (a constant trip count), each taking its tokens with
``torch.where``. Sparse as the original (each token meets only its top-k experts), no value-driven
Python, so the trace is general; the emitted model routes, picks top-k and dispatches in torch code.
The user's config is put back after capture.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.errors import CaptureError

IMPLEMENTATION = "torchgraft_expert_loop"


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    out = x @ weight if transposed else F.linear(x, weight)
    return out if bias is None else out + bias


def expert_loop(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' eager experts forward, looping over every expert rather than those hit."""
    final = torch.zeros_like(hidden_states)
    gated = getattr(self, "has_gate", True)
    bias = getattr(self, "has_bias", False)
    transposed = getattr(self, "is_transposed", False)
    for e in range(self.num_experts):
        token_idx, k_pos = torch.where(top_k_index == e)
        x = hidden_states[token_idx]
        if gated:
            h = _linear(x, self.gate_up_proj[e], self.gate_up_proj_bias[e] if bias else None, transposed)
            h = self._apply_gate(h)
        else:
            h = self.act_fn(_linear(x, self.up_proj[e], self.up_proj_bias[e] if bias else None, transposed))
        h = _linear(h, self.down_proj[e], self.down_proj_bias[e] if bias else None, transposed)
        h = h * top_k_weights[token_idx, k_pos, None]
        final = final.index_add(0, token_idx, h.to(final.dtype))
    return final


def _configs(model: nn.Module) -> list[Any]:
    """The configs of the model's experts modules that dispatch on ``_experts_implementation``."""
    out: dict[int, Any] = {}
    if "transformers" not in sys.modules:
        return []  # no transformers config can exist (nor be switched: ``_register`` imports transformers)
    for path, mod in model.named_modules():
        config = getattr(mod, "config", None)
        if not hasattr(config, "_experts_implementation_internal") or not hasattr(mod, "num_experts"):
            continue
        if not any(isinstance(getattr(mod, n, None), nn.Parameter) for n in ("gate_up_proj", "up_proj")):
            continue
        if getattr(mod, "has_post_expert_norm", False) or getattr(mod, "_is_expert_parallel", False):
            raise CaptureError(f"the experts at {path} use a post-expert norm or expert parallelism, which "
                               "torchgraft cannot write back yet; capture a model without them", path)
        out[id(config)] = config
    return list(out.values())


def _register() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS[IMPLEMENTATION] = expert_loop  # that instance's own mapping, not the global one


@contextlib.contextmanager
def experts_as_loops(model: nn.Module) -> Iterator[bool]:
    """While capturing, a transformers MoE model's experts run ``expert_loop``; yields whether any do."""
    configs = _configs(model)
    if not configs:
        yield False
        return
    _register()
    saved = [c._experts_implementation_internal for c in configs]
    try:
        for c in configs:
            c._experts_implementation_internal = IMPLEMENTATION
        yield True
    finally:
        for c, s in zip(configs, saved):
            c._experts_implementation_internal = s

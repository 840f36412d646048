"""Constants that a constructor call writes exactly: no constants file for them.

A non-persistent buffer is not in the state_dict, so the emitted model fills it from
``constants.safetensors`` after building it (``_load_constants``). Many such buffers are a plain
constructor's output: transformers' ``position_ids`` is ``torch.arange(512).expand((1, -1))`` and
``token_type_ids`` is zeros. When a buffer's value equals, element for element and in dtype,
``torch.zeros``/``torch.ones``/``torch.full`` or ``torch.arange(n).reshape(shape)``, the class builds it
that way and the value is not saved; a model whose constants all are so needs no constants file.

    self.register_buffer("position_ids", torch.zeros(1, 64, dtype=torch.int64), persistent=False)
    ... _load_constants(model)
->  self.register_buffer("position_ids", torch.arange(64).reshape(1, 64), persistent=False)
"""

from __future__ import annotations

from dataclasses import replace

import torch

from torchgraft.backends.torch.ctor import Call, CExpr, Lit, Raw
from torchgraft.errors import IRError
from torchgraft.ir.dtypes import build_dtype
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block
from torchgraft.ir.traverse import join, walk


def _dtype(t: torch.Tensor) -> tuple[tuple[str, CExpr], ...]:
    """``dtype=`` as ``_state_expr`` writes it: left out for float32."""
    return () if t.dtype == torch.float32 else (("dtype", Lit(t.dtype)),)


def constructor(t: torch.Tensor) -> CExpr | None:
    """The constructor call that builds ``t`` exactly (zeros, ones, a range of integers), or None.

    >>> constructor(torch.arange(4).reshape(1, 4))   # doctest: +SKIP
    Raw(text='torch.arange(4).reshape(1, 4)')
    """
    if t.layout != torch.strided or t.device.type == "meta" or t.is_complex() or t.is_quantized:
        return None
    t = t.detach().cpu()
    shape = tuple(Lit(int(d)) for d in t.shape) or (Lit(()),)
    negative_zero = t.is_floating_point() and bool(torch.signbit(t).any())
    if torch.equal(t, torch.zeros_like(t)) and not negative_zero:
        return Call("torch.zeros", shape, _dtype(t))
    if t.numel() and torch.equal(t, torch.ones_like(t)):
        return Call("torch.ones", shape, _dtype(t))
    if t.dtype in (torch.int64, torch.int32) and t.numel() > 1 \
            and torch.equal(t.reshape(-1), torch.arange(t.numel(), dtype=t.dtype)):
        dtype = "" if t.dtype == torch.int64 else f", dtype={t.dtype}"
        rng = f"torch.arange({t.numel()}{dtype})"
        return Raw(rng if t.dim() == 1 else f"{rng}.reshape({', '.join(str(int(d)) for d in t.shape)})")
    return None


def written_constants(model: Model) -> tuple[Model, dict[str, CExpr]]:
    """``model`` without the constants a constructor writes exactly, and those constructors by key. Only
    a Block's own non-persistent buffers are written so; other constants stay in the file."""
    owned = {join(p, s.name) for p, n in walk(model.root) if isinstance(n, Block)
             for s in n.state if not s.persistent and not s.parameter}
    known: dict[str, CExpr] = {}
    for key, value in model.constants.items():
        if key in owned and isinstance(value, torch.Tensor):
            expr = constructor(value)
            if expr is not None:
                known[key] = expr
    if not known:
        return model, {}
    reduced = replace(model, constants={k: v for k, v in model.constants.items() if k not in known})
    try:  # build() casts to the one dtype of all the state: what it decides must not change (a float32
        same = build_dtype(model) == build_dtype(reduced)  # zeros buffer in a bfloat16 model stays float32)
    except IRError:
        same = False  # emit reports the mixed dtypes itself
    return (reduced, known) if same else (model, {})


__all__ = ["constructor", "written_constants"]

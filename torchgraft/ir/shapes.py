"""Output types of the common ops without running a kernel (used by the meta replays of capture and retype).

On the meta device PyTorch still runs Python shape functions for many ops (``batch_norm``
about 0.6 ms a call, ``relu`` 0.2 ms: slower than the real op on a small input). These
rules give the same answer in microseconds. Each rule checks what the op itself checks
(channel counts, ranks, dtypes, the sizes norms and reflect padding need) and returns
``None`` when unsure (the caller then runs the op's meta kernel), or raises ``RuleError``
where the real op would fail but its meta kernel might not (mixed dtypes in a linear):
the caller then replays for real and reports the op's own error. Inputs that are not
contiguous (channels_last) get no rule, so the meta kernels keep their strides; except for
``layer_norm``, whose kernels (CPU, CUDA and meta alike) make the input contiguous first and
return a contiguous result whatever its strides.

>>> x = torch.empty(2, 3, 8, 8, device="meta")
>>> primitive_output(Conv("Conv2d", 3, 4, kernel_size=3, stride=2), (x,), {}, [], False).shape
torch.Size([2, 4, 3, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from torchgraft.ir.opkinds import FUNCTIONS, OpKind, method_kind
from torchgraft.ir.primitives import (
    Activation,
    BatchNorm,
    Conv,
    Dropout,
    GroupNorm,
    Identity,
    LayerNorm,
    Linear,
    TorchLayer,
)


class RuleError(RuntimeError):
    """The real op fails on these inputs (its meta kernel may not): replay for real to say how."""


_ANY_RANK_DROPOUT = ("Dropout", "AlphaDropout")  # Dropout1d/2d/3d check ranks: their meta kernels run
_BN_RANKS = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4,), "BatchNorm3d": (5,)}
_ARITHMETIC = (OpKind.ADD, OpKind.SUB, OpKind.MUL)


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A meta tensor: a shape and a dtype, no storage."""
    return torch.empty(shape, dtype=dtype, device="meta")


def _pair(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple) else (v,) * n


def _padded_ok(prim: Conv, x: torch.Tensor, pads: tuple[tuple[int, int], ...]) -> None:
    """reflect padding needs pad < size, circular pad <= size (else the real op raises)."""
    for (left, right), n in zip(pads, x.shape[-prim.dims:]):
        if (prim.padding_mode == "reflect" and max(left, right) >= n) or \
                (prim.padding_mode == "circular" and max(left, right) > n):
            raise RuleError(f"{prim.op} with padding_mode={prim.padding_mode!r}: padding {left, right} for size {n}")


def _conv(prim: Conv, x: torch.Tensor) -> torch.Tensor | None:
    d = prim.dims
    if prim.transposed or x.dim() not in (d + 1, d + 2) or x.shape[-d - 1] != prim.in_channels:
        return None
    ks, st, dil = _pair(prim.kernel_size, d), _pair(prim.stride, d), _pair(prim.dilation, d)
    if prim.padding == "same":
        totals = [k_d * (k - 1) for k_d, k in zip(dil, ks)]
        pads = tuple((t // 2, t - t // 2) for t in totals)
        spatial = tuple(x.shape[-d:])
    else:
        pad = (0,) * d if prim.padding == "valid" else _pair(prim.padding, d)
        pads = tuple((p, p) for p in pad)
        spatial = tuple((n + 2 * p - k_d * (k - 1) - 1) // s + 1
                        for n, p, k_d, k, s in zip(x.shape[-d:], pad, dil, ks, st))
    if min(spatial) <= 0:
        return None
    _padded_ok(prim, x, pads)
    return empty((*x.shape[:-d - 1], prim.out_channels, *spatial), x.dtype)


def _norm(prim: Any, x: torch.Tensor, training: bool) -> torch.Tensor | None:
    if isinstance(prim, BatchNorm):
        if x.dim() not in _BN_RANKS[prim.op] or x.shape[1] != prim.num_features:
            return None
        if (training or not prim.track_running_stats) and x.numel() // x.shape[1] == 1:
            raise RuleError(f"{prim.op} in training needs more than 1 value per channel, got {tuple(x.shape)}")
    elif isinstance(prim, LayerNorm):
        k = len(prim.normalized_shape)
        if x.dim() < k or tuple(x.shape[-k:]) != prim.normalized_shape:
            return None
    else:  # GroupNorm
        if x.dim() < 2 or x.shape[1] != prim.num_channels:
            return None
        if x.shape[0] * prim.num_channels // prim.num_groups * math.prod(x.shape[2:]) == 1:
            raise RuleError(f"GroupNorm needs more than 1 value per group, got {tuple(x.shape)}")
    return empty(x.shape, x.dtype)


def _same_dtype(prim: Any, x: torch.Tensor, dtypes: set[torch.dtype]) -> bool:
    """Whether state and input dtypes agree; a layer with weights refuses a mismatch."""
    if dtypes <= {x.dtype}:
        return True
    if isinstance(prim, (Linear, Conv)) or (isinstance(prim, TorchLayer) and prim.op == "MultiheadAttention"):
        raise RuleError(f"{prim.op}: input {x.dtype} but weights {sorted(map(str, dtypes))}")
    return False


def primitive_output(prim: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     state: Sequence[torch.Tensor], training: bool) -> Any:
    """The output of primitive ``prim`` called on ``args`` (a meta tensor; a pair for
    MultiheadAttention), or None where no rule applies.

    ``state`` are the module's floating-point parameters and buffers (empty for a
    functional call) and ``training`` its mode.
    """
    if any(not t.is_contiguous() for t in state):
        return None
    dtypes = {t.dtype for t in state}
    if isinstance(prim, TorchLayer) and prim.op == "MultiheadAttention":
        return _attention(dict(prim.args), args, kwargs, dtypes)
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if not _same_dtype(prim, x, dtypes) or not x.is_floating_point():
        return None
    if not x.is_contiguous() and not isinstance(prim, LayerNorm):  # layer_norm's result is contiguous anyway
        return None
    if isinstance(prim, (Activation, Identity)) or (isinstance(prim, Dropout) and prim.op in _ANY_RANK_DROPOUT):
        return x if isinstance(prim, Identity) or getattr(prim, "inplace", False) else empty(x.shape, x.dtype)
    if isinstance(prim, (BatchNorm, LayerNorm, GroupNorm)):
        return _norm(prim, x, training)
    if isinstance(prim, Linear):
        ok = x.dim() >= 1 and x.shape[-1] == prim.in_features
        return empty((*x.shape[:-1], prim.out_features), x.dtype) if ok else None
    if isinstance(prim, Conv):
        return _conv(prim, x)
    if isinstance(prim, TorchLayer) and prim.op == "AdaptiveAvgPool2d" and _global(dict(prim.args).get("output_size")):
        ok = x.dim() in (3, 4) and x.numel() > 0  # global average pooling (SE blocks, classifier heads)
        return empty((*x.shape[:-2], 1, 1), x.dtype) if ok else None
    return None


def _global(size: Any) -> bool:
    """Whether an adaptive pool's ``output_size`` is 1 (or (1, 1)): exactly, as ints."""
    return (type(size) is int and size == 1) or (type(size) is tuple and len(size) == 2
                                                 and all(type(n) is int and n == 1 for n in size))


_MHA_PARAMS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
               "average_attn_weights", "is_causal")


def _attention(cfg: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               state_dtypes: set[torch.dtype]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``nn.MultiheadAttention(query, key, value, ...)`` on batched inputs without masks."""
    if len(args) > len(_MHA_PARAMS) or any(k not in _MHA_PARAMS or k in _MHA_PARAMS[:len(args)] for k in kwargs):
        return None
    call = {**dict(zip(_MHA_PARAMS, args)), **kwargs}
    q, k, v = call.get("query"), call.get("key"), call.get("value")
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return None
    if any(call.get(n) is not None for n in ("key_padding_mask", "attn_mask")) or call.get("is_causal"):
        return None  # masks have their own shape checks: the meta kernel runs them
    if cfg.get("add_bias_kv") or cfg.get("add_zero_attn") or {q.dim(), k.dim(), v.dim()} != {3}:
        return None
    if not q.is_floating_point() or not all(t.is_contiguous() for t in (q, k, v)):
        return None
    if {k.dtype, v.dtype} | state_dtypes != {q.dtype}:
        raise RuleError(f"MultiheadAttention: dtypes {q.dtype}, {k.dtype}, {v.dtype} with weights {state_dtypes}")
    embed, heads = cfg["embed_dim"], cfg["num_heads"]
    batch, seq = (0, 1) if cfg.get("batch_first") else (1, 0)
    if (q.shape[-1], k.shape[-1], v.shape[-1]) != (embed, cfg.get("kdim") or embed, cfg.get("vdim") or embed):
        return None
    if k.shape[:-1] != v.shape[:-1] or k.shape[batch] != q.shape[batch]:
        return None
    n, length, source = q.shape[batch], q.shape[seq], k.shape[seq]
    weights = None
    if call.get("need_weights", True):
        shape = (n, length, source) if call.get("average_attn_weights", True) else (n, heads, length, source)
        weights = empty(shape, q.dtype)
    if cfg.get("batch_first"):  # computed sequence-first and transposed back (off the fast path)
        return empty((length, n, embed), q.dtype).transpose(0, 1), weights
    return empty(q.shape, q.dtype), weights


def cat_output(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``torch.cat(tensors, dim)`` of tensors with one dtype and rank; None where no rule applies."""
    if not 1 <= len(args) <= 2 or set(kwargs) - {"dim"} or (len(args) == 2 and kwargs):
        return None
    tensors, dim = args[0], args[1] if len(args) == 2 else kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or isinstance(dim, bool) or not isinstance(dim, int):
        return None
    if not all(isinstance(t, torch.Tensor) and t.is_contiguous() for t in tensors):
        return None
    first, rank = tensors[0], tensors[0].dim()
    if rank == 0 or any(t.dim() != rank or t.dtype != first.dtype for t in tensors) or not -rank <= dim < rank:
        return None
    d = dim % rank
    if any(t.shape[:d] != first.shape[:d] or t.shape[d + 1:] != first.shape[d + 1:] for t in tensors):
        return None
    return empty((*first.shape[:d], sum(t.shape[d] for t in tensors), *first.shape[d + 1:]), first.dtype)


_LAYER_NORM_PARAMS = ("input", "normalized_shape", "weight", "bias", "eps")


def layer_norm_output(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.layer_norm(input, normalized_shape, weight, bias, eps)`` of a floating-point input, its weight and
    bias of its dtype and of ``normalized_shape``: a contiguous tensor of the input's shape (the kernel makes
    the input contiguous first, whatever its strides); None where no rule applies."""
    if len(args) > len(_LAYER_NORM_PARAMS) or any(k not in _LAYER_NORM_PARAMS or k in _LAYER_NORM_PARAMS[:len(args)]
                                                   for k in kwargs):
        return None
    call = {**dict(zip(_LAYER_NORM_PARAMS, args)), **kwargs}
    x, shape, eps = call.get("input"), call.get("normalized_shape"), call.get("eps", 1e-5)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        return None
    if type(shape) not in (list, tuple, torch.Size) or not shape or not all(type(n) is int for n in shape):
        return None
    if type(eps) not in (int, float) or x.dim() < len(shape) or tuple(x.shape[-len(shape):]) != tuple(shape):
        return None
    affine = [t for t in (call.get("weight"), call.get("bias")) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in [x, *affine] if isinstance(t, torch.Tensor)):
        return None  # the result would require grad: the kernel says how
    for t in affine:
        if not (isinstance(t, torch.Tensor) and t.dtype == x.dtype and tuple(t.shape) == tuple(shape)
                and t.device == x.device):
            return None
    return empty(x.shape, x.dtype)


def function_output(qualname: str, args: list[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The result of a function call ``qualname(*args, **kwargs)`` on meta tensors where a rule applies
    (``F.layer_norm``, arithmetic: ``layer_norm_output``, ``binary_output``), else None."""
    if qualname == "torch.nn.functional.layer_norm":
        return layer_norm_output(args, kwargs)
    return binary_output(qualname, args, kwargs)


def binary_output(name: str, args: list[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``a + b``, ``a * b``, ``a - b`` and their in-place forms (``name`` is a function's qualname or a Tensor
    method's name, looked up in the op kind table), by broadcasting and type promotion; None where no rule
    applies, ``RuleError`` for a boolean subtraction (torch refuses it; its meta kernel does not)."""
    op = FUNCTIONS.get(name) if "." in name else method_kind(name)
    if op is None or op.kind not in _ARITHMETIC or len(args) != 2 or kwargs:
        return None
    a, b = args
    if not all(isinstance(v, (torch.Tensor, bool, int, float)) for v in (a, b)):
        return None
    tensors = [v for v in (a, b) if isinstance(v, torch.Tensor)]
    if not tensors or not all(t.is_contiguous() for t in tensors):
        return None
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        dtype = torch.result_type(a, b)
    except (RuntimeError, OverflowError):
        return None
    if op.kind is OpKind.SUB and any(isinstance(v, bool) or getattr(v, "dtype", None) == torch.bool for v in (a, b)):
        raise RuleError("torch refuses to subtract booleans")  # its meta kernel does not
    if op.in_place:
        ok = isinstance(a, torch.Tensor) and a.shape == shape and torch.can_cast(dtype, a.dtype)
        return a if ok else None
    return empty(shape, dtype)


__all__ = ["RuleError", "binary_output", "cat_output", "empty", "function_output", "layer_norm_output",
           "primitive_output"]

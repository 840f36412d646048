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

Rotary inverse frequencies (transformers' default RoPE, ``1.0 / (base ** (torch.arange(0, dim, 2) / dim))``)
are written as that formula (``Rope``) when an integer base and a ``dim`` reproduce the buffer bit for bit:
the check computes ``Rope.value()``, the same operations in the same order and dtypes as the text
``Rope.text()`` that ``model.py`` runs. ``classtext`` builds such a buffer in a local first
(``inv_freq = 1.0 / 10000 ** (...)``), and a second buffer with the same formula clones it. The formula is
computed where ``build()`` runs: on the CPU (``build()``, ``load()``) it is the captured value exactly; built
under another default device it is what the original class computes there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from torchgraft.backends.torch.ctor import Call, CExpr, Lit, Raw
from torchgraft.errors import IRError
from torchgraft.ir.dtypes import build_dtype
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef
from torchgraft.ir.traverse import join, walk


def _dtype(t: torch.Tensor) -> tuple[tuple[str, CExpr], ...]:
    """``dtype=`` as ``_state_expr`` writes it: left out for float32."""
    return () if t.dtype == torch.float32 else (("dtype", Lit(t.dtype)),)


@dataclass(frozen=True)
class Formula(Raw):
    """A constructor written as a formula worth a local variable in ``__init__`` (``classtext``)."""


@dataclass(frozen=True)
class Rope:
    """transformers' default rotary inverse frequencies: ``1.0 / base ** (torch.arange(0, dim, 2).float() / dim)``.

    ``value`` and ``text`` are the same expression, operator for operator (``1.0 / t`` and ``base ** t`` are
    the tensor's reflected operators in both): what ``value`` computes is what the emitted text computes.
    """

    base: int | float
    """An integer, written ``10000`` or, where that is what reproduces the buffer, ``10000.0``."""
    dim: int

    def value(self) -> torch.Tensor:
        """The tensor the emitted text builds (float32, on the CPU)."""
        return 1.0 / self.base ** (torch.arange(0, self.dim, 2).float() / self.dim)

    def text(self) -> str:
        """The emitted expression."""
        return f"1.0 / {self.base!r} ** (torch.arange(0, {int(self.dim)}, 2).float() / {int(self.dim)})"


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
            and torch.equal(torch.signbit(a), torch.signbit(b)))


def rope(t: torch.Tensor) -> Rope | None:
    """The ``Rope`` whose value is ``t`` bit for bit (a 1-D float32 tensor of 2 to 4096 items), or None.

    For ``dim`` in ``(2n, 2n - 1)`` the base is estimated from the last item (``t[-1] = base ** (-2(n-1)/dim)``);
    the integers near the estimate are tried, roundest first (``5000000`` before ``4999999``), each as an int
    and then as a float, and one is accepted only when ``Rope(base, dim).value()`` equals ``t`` exactly.
    """
    if t.dim() != 1 or t.dtype != torch.float32 or not 2 <= t.numel() <= 4096 or not bool(torch.isfinite(t).all()) \
            or not bool((t > 0).all()) or float(t[0]) != 1.0:
        return None
    n = t.numel()
    last = float(t[-1].double().log())
    for dim in (2 * n, 2 * n - 1):
        log_base = -last * dim / (2 * (n - 1))
        if not 4.5 < log_base < 40:  # rope bases, from 100 to about 2e17 (1, 1/2, 1/4 is a series, not a rope)
            continue
        estimate = math.exp(log_base)
        spread = estimate * 1e-5 * dim / (2 * (n - 1)) + 1  # float32 rounding of t[-1], amplified
        for b in _round_first(estimate, spread):
            for base in (b, float(b)):  # ``10000 ** t`` and ``10000.0 ** t`` may differ in the last bit
                with torch.device("cpu"):  # as build() computes it (emit may run under another default device)
                    same = _bitwise_equal(Rope(base, dim).value(), t.cpu())
                if same:
                    return Rope(base, dim)
    return None


def _round_first(estimate: float, spread: float, limit: int = 32) -> list[int]:
    """Integers (at least 100) within ``spread`` of ``estimate``, the roundest first (most trailing zeros), at most
    ``limit`` of them."""
    lo, hi = max(100, math.ceil(estimate - spread)), math.floor(estimate + spread)
    out: list[int] = []
    step = 10 ** max(0, len(str(max(hi, 1))) - 1)
    while step >= 1 and len(out) < limit:
        for k in range(-(-lo // step) * step, hi + 1, step):
            if len(out) == limit:
                break
            if k not in out:
                out.append(k)
        step //= 10
    return out


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
    found = rope(t)
    return Formula(found.text()) if found is not None else None


def written_constants(model: Model) -> tuple[Model, dict[str, CExpr]]:
    """``model`` without the constants a constructor writes exactly, and those constructors by key. Only
    a Block's own non-persistent buffers are written so; other constants stay in the file."""
    owned = {join(p, s.name): (n.cls, s.name) for p, n in walk(model.root) if isinstance(n, Block)
             for s in n.state if not s.persistent and not s.parameter}
    known: dict[str, CExpr] = {}
    for key, value in model.constants.items():
        if key in owned and isinstance(value, torch.Tensor):
            expr = constructor(value)
            if expr is not None:
                known[key] = expr
    known = _uniform_formulas(known, owned)
    if not known:
        return model, {}
    reduced = replace(model, constants={k: v for k, v in model.constants.items() if k not in known})
    try:  # build() casts to the one dtype of all the state: what it decides must not change (a float32
        same = build_dtype(model) == build_dtype(reduced)  # zeros buffer in a bfloat16 model stays float32)
    except IRError:
        same = False  # emit reports the mixed dtypes itself
    return (reduced, known) if same else (model, {})


def _uniform_formulas(known: dict[str, CExpr], owned: dict[str, tuple[ClassRef, str]]) -> dict[str, CExpr]:
    """``known`` less the formulas of a buffer that another instance of the same class builds otherwise: one
    class writes one formula in ``__init__`` (a formula passed in as a constructor argument would be a default
    tensor that instances share)."""
    per_member: dict[tuple[ClassRef, str], set[CExpr | None]] = {}
    for key, member in owned.items():
        per_member.setdefault(member, set()).add(known.get(key))
    return {k: e for k, e in known.items() if not isinstance(e, Formula) or per_member[owned[k]] == {e}}


__all__ = ["Formula", "Rope", "constructor", "rope", "written_constants"]

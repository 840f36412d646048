"""The inputs of :func:`torchgraft.check`'s probes: the example resized, lengthened or padded.

See :mod:`torchgraft.probes` for what each probe changes and how values are made.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from torchgraft.probes import REPEAT_CALLS, Inputs, Probe, error_text

__all__ = ["make_probes"]


@dataclass(frozen=True, eq=False)
class Leaf:
    """One input tensor: the ``forward`` argument it belongs to and its kind of values (equal only to itself)."""

    name: str
    tensor: torch.Tensor
    kind: str  # float, ids, mask, positions, bool or fixed (0-dim, never changed)


def make_probes(
    module: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    kinds: Sequence[str],
    *,
    seed: int = 0,
    length_delta: int = 3,
    spatial: bool = False,
) -> list[Probe]:
    """The probes of ``kinds`` beyond the example (see the module docstring), in order.

    A probe these inputs give nothing to vary for (no token input, no mask) comes back
    with ``skip`` saying why. ``"example"`` in ``kinds`` is ignored: it needs no inputs.
    """
    inputs: Inputs = (tuple(args), dict(kwargs))
    flat, spec = pytree.tree_flatten(inputs)
    leaves = _classify(flat, _leaf_names(module, inputs))
    gen = torch.Generator().manual_seed(seed)

    def build(kind: str, name: str, new: list[Any]) -> Probe:
        args2, kwargs2 = pytree.tree_unflatten(new, spec)
        return Probe(kind, name, tuple(args2), dict(kwargs2))

    makers = {"batch": _batch, "length": _length, "padding": _padding}
    probes: list[Probe] = []
    for kind in kinds:
        if kind == "repeat":
            probes.append(Probe("repeat", f"repeat={REPEAT_CALLS}", *inputs, calls=REPEAT_CALLS))
        elif kind in makers:
            try:
                made = makers[kind](flat, leaves, gen, length_delta, spatial)
            except Exception as e:  # noqa: BLE001 - tensors of a kind this code cannot make
                made = [(kind, f"cannot vary these inputs: {error_text(e)}")]
            for name, new in made:
                probes.append(build(kind, name, new) if isinstance(new, list) else Probe(kind, name, skip=new))
    return probes


def _leaf_names(module: nn.Module, inputs: Inputs) -> list[str]:
    """The ``forward`` parameter name of each leaf of ``inputs`` (``arg0``... where unknown)."""
    args, kwargs = inputs
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = [p.name for p in params if p.kind == p.VAR_POSITIONAL]
    names = [positional[i] if i < len(positional) else (rest or [f"arg{i}"])[0] for i in range(len(args))]
    out = []
    for name, value in [*zip(names, args), *kwargs.items()]:
        out += [name.lower()] * len(pytree.tree_leaves(value))
    return out


def _classify(flat: list[Any], names: list[str]) -> list[Leaf | None]:
    """A :class:`Leaf` per tensor leaf (``None`` for other leaves), masks found by name or shape."""
    leaves = [Leaf(n, v, _kind(n, v)) if isinstance(v, torch.Tensor) else None for n, v in zip(names, flat)]
    token_shapes = {tuple(x.tensor.shape) for x in leaves if x and x.kind == "ids" and x.tensor.dim() >= 2
                    and not _binary(x.tensor)}
    for i, x in enumerate(leaves):
        if (x and x.kind in ("ids", "bool") and _binary(x.tensor) and tuple(x.tensor.shape) in token_shapes
                and not x.name.endswith("ids")):
            leaves[i] = replace(x, kind="mask")
    return leaves


def _kind(name: str, t: torch.Tensor) -> str:
    """The kind of one tensor input from its name and values (before the shape rule for masks)."""
    if t.dim() == 0:
        return "fixed"
    if "mask" in name and _binary(t):
        return "mask"
    if t.dtype == torch.bool:
        return "bool"
    if t.is_floating_point() or t.is_complex():
        return "float"
    return "positions" if re.search(r"(^|_)pos", name) else "ids"


def _binary(t: torch.Tensor) -> bool:
    """True when every value is 0 or 1."""
    try:
        return t.numel() > 0 and bool(((t == 0) | (t == 1)).all())
    except RuntimeError:  # sparse, quantized, meta...
        return False


def _fresh(leaf: Leaf, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """New values of ``leaf``'s kind, dtype and device in ``shape`` (see the module docstring)."""
    t, size = leaf.tensor, tuple(shape)
    if leaf.kind == "float":
        kind = torch.complex64 if t.is_complex() else torch.float32
        x = torch.randn(size, generator=gen, dtype=kind)
        if not t.is_complex() and t.numel() > 1:
            std, mean = torch.std_mean(t.detach().double())
            if bool(std.isfinite() & mean.isfinite()) and float(std) > 0:
                x = x * float(std) + float(mean)
    elif leaf.kind == "ids":
        low, high = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
        x = torch.randint(low, high + 1, size, generator=gen)
    elif leaf.kind == "positions":
        x = (torch.arange(size[-1]) + (int(t.min()) if t.numel() else 0)).expand(size).contiguous()
    elif leaf.kind == "mask":
        x = torch.full(size, _keep(t))
    elif leaf.kind == "bool":
        x = torch.rand(size, generator=gen) < 0.5
    else:
        return t
    return x.to(dtype=t.dtype, device=t.device)


def _keep(mask: torch.Tensor) -> int:
    """The value a mask mostly holds (1 for attention masks, 0 for ``key_padding_mask``)."""
    return int(bool((mask != 0).double().mean() >= 0.5))


def _resized(leaf: Leaf | None, value: Any, sizes: Mapping[int, int], gen: torch.Generator) -> Any:
    """``value`` with dims ``d`` replaced by ``sizes[d]`` (fresh values), or unchanged."""
    if leaf is None or leaf.kind == "fixed" or not sizes:
        return value
    shape = list(leaf.tensor.shape)
    for d, n in sizes.items():
        shape[d] = n
    return value if shape == list(leaf.tensor.shape) else _fresh(leaf, shape, gen)


# ---------------------------------------------------------------------------- probe kinds

Made = list[tuple[str, list[Any] | str]]  # (probe name, new leaves or the reason it is skipped)


def _batch(flat: list[Any], leaves: list[Leaf | None], gen: torch.Generator, _d: int, _s: bool) -> Made:
    """``batch=1`` and ``batch=B+1``: every tensor whose dim 0 is the example's batch size B."""
    batched = [x for x in leaves if x and x.kind not in ("fixed", "positions")]
    if not batched:
        return [("batch", "no tensor input with a batch dim")]
    b = batched[0].tensor.shape[0]
    made: Made = []
    for n in sorted({1, b + 1} - {b}):
        new = [_resized(x, v, {0: n} if x and x.tensor.shape[0] == b else {}, gen) for x, v in zip(leaves, flat)]
        made.append((f"batch={n}", new))
    return made


def _length(flat: list[Any], leaves: list[Leaf | None], gen: torch.Generator, delta: int, spatial: bool) -> Made:
    """``length=L+delta`` for token inputs; with ``spatial``, ``spatial+delta`` for float inputs of rank >= 3."""
    tokens = [x for x in leaves if x and x.kind == "ids" and x.tensor.dim() >= 2]
    made: Made = []
    if tokens:
        n = tokens[0].tensor.shape[1]
        new = [_resized(x, v, _length_dims(x, n, n + delta), gen) for x, v in zip(leaves, flat)]
        made.append((f"length={n + delta}", new))
    if spatial:
        floats = [x for x in leaves if x and x.kind == "float" and x.tensor.dim() >= 3]
        sizes = [{d: s + delta for d, s in enumerate(x.tensor.shape) if d >= 2} if x in floats else {}
                 for x in leaves]
        if floats:
            made.append((f"spatial+{delta}", [_resized(x, v, s, gen) for x, v, s in zip(leaves, flat, sizes)]))
    if not made:
        more = " and no float input of rank >= 3" if spatial else " (spatial=True varies float inputs)"
        made.append(("length", "no integer token-id input of rank >= 2" + more))
    return made


def _length_dims(leaf: Leaf | None, old: int, new: int) -> dict[int, int]:
    """Dims of ``leaf`` that hold the token length: all dims >= 1 of that size, dim 1 only for floats."""
    if leaf is None or leaf.kind == "fixed":
        return {}
    shape = leaf.tensor.shape
    dims = [1] if leaf.kind == "float" and leaf.tensor.dim() >= 2 else range(1, leaf.tensor.dim())
    return {d: new for d in dims if shape[d] == old}


def _padding(flat: list[Any], leaves: list[Leaf | None], gen: torch.Generator, _d: int, _s: bool) -> Made:
    """``padding=right`` and ``padding=left``: masks with some rows' ends (starts) padded."""
    masks = [x for x in leaves if x and x.kind == "mask" and x.tensor.shape[-1] >= 2]
    if not masks:
        return [("padding", "no 0/1 mask input of length >= 2")]
    counts: dict[tuple[int, int], torch.Tensor] = {}
    for x in masks:
        rows, length = (x.tensor.shape[0] if x.tensor.dim() >= 2 else 1), x.tensor.shape[-1]
        if (rows, length) not in counts:
            k = torch.randint(0, length, (rows,), generator=gen)
            if int(k.max()) == 0:
                k[0] = max(1, length // 2)
            counts[rows, length] = k
    made: Made = []
    for side in ("right", "left"):
        new = [_padded(x, v, counts, side) if x in masks else v for x, v in zip(leaves, flat)]
        made.append((f"padding={side}", new))
    return made


def _padded(leaf: Leaf | None, value: Any, counts: Mapping[tuple[int, int], torch.Tensor], side: str) -> Any:
    """The example mask with ``counts[row]`` positions at the end (start) of each row set to the pad value."""
    assert leaf is not None
    t = leaf.tensor.detach().clone()
    rows = t if t.dim() >= 2 else t.unsqueeze(0)
    length, pad = t.shape[-1], 1 - _keep(leaf.tensor)
    for row, k in enumerate(counts[rows.shape[0], length].tolist()):
        before = rows[row].clone()
        if side == "right":
            rows[row, ..., length - k:] = pad
        else:
            rows[row, ..., :k] = pad
        if not bool((rows[row] != pad).any()):  # the example row was padded on the other side
            rows[row] = before
    return t

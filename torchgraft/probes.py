"""Inputs beyond the example for :func:`torchgraft.check`, and the runs that feed them in.

A capture sees one call, so ``check`` also runs both modules on inputs derived from the
example (:func:`make_probes`)::

    example        the example inputs, as given
    batch=1, =B+1  every tensor whose leading dim is the example's batch size B, resized
    length=L+3     integer token ids of rank >= 2 (and masks, positions, per-token floats
                   sharing that length) one length longer; ``spatial=True`` adds a probe
                   that grows dims 2+ of float inputs of rank >= 3 (images, audio)
    padding=right  0/1 masks with the end of some rows padded (one kept value per row)
    padding=left   the same at the start of the rows
    repeat=3       three calls in a row on one copy of each model (state updated in forward)

Resized tensors get fresh random values of their kind: floats ``randn`` scaled to the
example's mean and std, token ids in the example's ``[min, max]``, masks filled with
their majority (kept) value, positions ``arange`` from the example's first position,
bools at random. An input's kind comes from its values and its name in ``forward``:
a 0/1 tensor named ``*mask*`` is a mask, as is a 0/1 integer or bool tensor (not named
``*ids``) shaped like a token input; an integer tensor named ``pos*``/``*_pos*`` holds
positions; other integer tensors hold token ids. Values come from a generator seeded
with ``seed``, never from the global RNG.

Running: :func:`run_copy` runs a deep copy of one module (seeded, on clones of the
inputs, outputs cloned), :func:`run_both` runs both and sorts what they raise,
:func:`record` keeps every submodule's output tensors (to find the first divergence).

>>> probes = make_probes(nn.Identity(), (torch.zeros(2, 5, dtype=torch.long),), {}, ("batch",))
>>> [p.name for p in probes]
['batch=1', 'batch=3']
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["PROBE_KINDS", "PairRun", "Probe", "flatten", "make_probes", "probe_kinds", "record", "run_both", "run_copy"]

PROBE_KINDS = ("example", "batch", "length", "padding", "repeat")
REPEAT_CALLS = 3
OK, MISMATCH, REFUSED, SKIPPED = "ok", "MISMATCH", "refused", "skipped"

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
Flat = list[tuple[str, Any]]
Calls = list[tuple[tuple[str, int], Flat]]
Deltas = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Probe:
    """One set of inputs to run both modules on: ``calls`` calls, or a reason it cannot run (``skip``)."""

    kind: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    calls: int = 1
    skip: str = ""


def probe_kinds(probes: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The probe kinds an option value selects, in :data:`PROBE_KINDS` order.

    ``True`` (or ``"all"``) selects all, ``False``/``None`` the example only; a string
    may list kinds separated by commas.

    >>> probe_kinds("repeat,example")
    ('example', 'repeat')
    """
    if probes is True or probes == "all":
        return PROBE_KINDS
    if probes is False or probes is None:
        return ("example",)
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else list(probes)
    unknown = [p for p in names if p not in PROBE_KINDS]
    if unknown or not names:
        raise ValueError(f"check: unknown probe(s) {unknown}; use any of {list(PROBE_KINDS)}, True or False")
    return tuple(k for k in PROBE_KINDS if k in names)


# ---------------------------------------------------------------------------- running


def run_copy(
    module: nn.Module,
    mode: str,
    inputs: Inputs,
    seed: int,
    calls: int = 1,
    install: Callable[[nn.Module], None] | None = None,
    before_call: Callable[[int], None] | None = None,
) -> tuple[nn.Module, list[Any]]:
    """Run a deep copy of ``module`` ``calls`` times in ``mode``; the copy and each call's output.

    Every call gets fresh clones of ``inputs`` and runs under ``torch.no_grad()`` after
    ``torch.manual_seed(seed + i)``; the caller's RNG state is restored afterwards.
    ``install`` sees the copy before the first call (to add hooks), ``before_call`` runs
    before each call with its index. Outputs are cloned, so later calls cannot change them.
    """
    model = copy.deepcopy(module).train(mode == "train")
    if install is not None:
        install(model)
    outputs = []
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
        for i in range(calls):
            if before_call is not None:
                before_call(i)
            args, kwargs = clone(inputs)
            torch.manual_seed(seed + i)
            outputs.append(clone(model(*args, **kwargs)))
    return model, outputs


def _cuda_devices() -> list[int]:
    """CUDA devices whose RNG state ``manual_seed`` changes (none unless CUDA is in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def clone(value: Any) -> Any:
    """A copy of a nested structure with every tensor detached and cloned."""
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


@dataclass
class PairRun:
    """Both modules run on one probe: each call's outputs and how each buffer changed, or why not.

    ``failure`` is ``(status, reason)`` when a module raised: ``skipped`` for the
    reference, ``refused`` for the candidate's ``ValueError``, ``MISMATCH`` for any other.
    """

    failure: tuple[str, str] | None = None
    ref: list[Any] = field(default_factory=list)
    cand: list[Any] = field(default_factory=list)
    deltas: tuple[Deltas | None, Deltas | None] = (None, None)


def run_both(ref: nn.Module, cand: nn.Module, mode: str, inputs: Inputs, seed: int, calls: int = 1) -> PairRun:
    """Run copies of both modules on ``inputs`` (see :func:`run_copy`), catching what they raise."""
    try:
        ref_model, ref_outs = run_copy(ref, mode, inputs, seed, calls)
    except Exception as e:  # noqa: BLE001 - the reference does not take these inputs
        return PairRun((SKIPPED, f"reference raised {_error(e)}"))
    try:
        cand_model, cand_outs = run_copy(cand, mode, inputs, seed, calls)
    except ValueError as e:  # a run-time guard of an emitted model: loud, not wrong
        return PairRun((REFUSED, f"candidate raised {_error(e)}"))
    except Exception as e:  # noqa: BLE001 - any other error is a failure, reported as one
        return PairRun((MISMATCH, f"candidate raised {_error(e)}"))
    return PairRun(None, ref_outs, cand_outs, (_buffer_deltas(ref, ref_model), _buffer_deltas(cand, cand_model)))


def flatten(value: Any, path: str = "out") -> Flat:
    """Leaves of a nested output as ``(path, leaf)`` pairs, e.g. ``("out['logits']", tensor)``.

    Mappings (including transformers' ``ModelOutput``) give ``[key]``, lists and tuples
    ``[i]``, named tuples and dataclass instances ``.field``; anything else is a leaf.
    """
    return list(_walk(value, path))


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Depth-first leaves of ``value`` (see :func:`flatten`)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}[{key!r}]")
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for name, item in zip(value._fields, value, strict=True):
            yield from _walk(item, f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name), f"{path}.{f.name}")
    else:
        yield path, value


def record(module: nn.Module, mode: str, inputs: Inputs, seed: int, calls: int = 1) -> Calls:
    """Run a copy of ``module`` with a forward hook on every submodule; what the last call recorded.

    Returns ``((name, k), tensors)`` in the order the calls finish, ``k`` counting the
    calls of a module used more than once; the tensors are cloned when recorded, so
    later in-place ops do not change them.
    """
    recorded: Calls = []
    counts: dict[str, int] = {}

    def install(model: nn.Module) -> None:
        for name, sub in model.named_modules():
            sub.register_forward_hook(_hook(name, recorded, counts))

    def forget(_i: int) -> None:
        recorded.clear()
        counts.clear()

    run_copy(module, mode, inputs, seed, calls, install, forget)
    return recorded


def _hook(name: str, calls: Calls, counts: dict[str, int]) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook appending the module's output tensors to ``calls``."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        k = counts[name] = counts.get(name, -1) + 1
        tensors = [(p, v.detach().clone()) for p, v in flatten(output) if isinstance(v, torch.Tensor)]
        calls.append(((name, k), tensors))

    return hook


def _buffer_deltas(before: nn.Module, after: nn.Module) -> Deltas | None:
    """``after``'s buffers minus ``before``'s, in double precision (``None`` if they differ in names)."""
    old, new = dict(before.named_buffers()), dict(after.named_buffers())
    if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in old):
        return None
    return {k: _double(new[k]) - _double(old[k].to(new[k].device)) for k in old}


def _double(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float64 (complex128 for complex tensors)."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def _error(e: BaseException) -> str:
    """``Type: first line of the message``, cut to a readable length."""
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text if len(text) <= 100 else text[:97] + '...'}"


# ---------------------------------------------------------------------------- inputs


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
                made = [(kind, f"cannot vary these inputs: {_error(e)}")]
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

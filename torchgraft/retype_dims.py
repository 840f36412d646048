"""Symbolic types for ``retype``: the trial sizes its replays run at, and their merge into one type per value.

Every symbol of the model's input types (``N``, ``T``) gets distinct prime trial sizes that no
fixed input dim uses (``frontends.hand_dims.TrialPlan``). The IR is replayed once per set of
sizes, with plain (concrete) types recorded, and each value's types across the runs become one
type: a dim equal in every run is that int (so a real size 3, or 11, stays a number), a dim that
follows the symbols is written with them (``N``, ``N*4``, ``T-1``, ``N*T``), anything else is an
IRError naming the path. A model with one symbol needs two runs; with k symbols, k + 2 (one per
symbol, a base, and one with all changed, which tells ``N+T`` from ``N*T``).

>>> plan = trial_plan((TensorType(("N", "T"), "int64"),))
>>> plan.runs
({'N': 11, 'T': 19}, {'N': 13, 'T': 19}, {'N': 11, 'T': 23}, {'N': 17, 'T': 29})
>>> str(merge_type(plan, [TensorType((11, 19, 3)), TensorType((13, 19, 3)), TensorType((11, 23, 3)),
...                       TensorType((17, 29, 3))], "emb", "cpu"))
'f32[N, T, 3]'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchgraft.errors import IRError
from torchgraft.frontends.hand_dims import TrialPlan, where
from torchgraft.ir.graph import InputKind
from torchgraft.ir.model import Model
from torchgraft.ir.types import TensorType, ValueType


def trial_plan(inputs: Sequence[ValueType]) -> TrialPlan | None:
    """The runs a replay of a model with these input types needs; None when an input has a derived dim.

    None: one run; k symbols: TrialPlan's k + 2 (one symbol: three runs, so a dim that is not a line
    in N, such as N*N, is seen rather than fitted by the line through two points).

    >>> trial_plan((TensorType(("N", 3, 11)),)).runs
    ({'N': 13}, {'N': 17}, {'N': 19})
    """
    tensors = [t for t in inputs if isinstance(t, TensorType)]
    symbols = tuple(dict.fromkeys(d for t in tensors for d in t.shape if isinstance(d, str)))
    if any(not s.isidentifier() for s in symbols):
        return None  # "N*2" as an input dim: no size to give it from the symbols alone
    plan = TrialPlan.for_symbols(symbols, {d for t in tensors for d in t.shape if isinstance(d, int)})
    return plan


def example_inputs(model: Model, sizes: Mapping[str, int]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Meta tensors for ``model.inputs`` with each symbol at its trial size (positional and keyword);
    None when a non-tensor input has no default (the replay could not call the model).

    >>> from torchgraft.ir.graph import Input
    >>> args, _ = example_inputs(Model("M", None, (Input("x", TensorType(("N", 4))),)), {"N": 11})  # doctest: +SKIP
    >>> args[0].shape                                                                                  # doctest: +SKIP
    torch.Size([11, 4])
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for inp in model.inputs:
        if not isinstance(inp.type, TensorType):
            if inp.default is None:
                return None
            continue
        shape = [sizes[d] if isinstance(d, str) else d for d in inp.type.shape]
        t = torch.empty(shape, dtype=getattr(torch, inp.type.dtype), device="meta")
        if inp.kind is InputKind.KEYWORD:
            kwargs[inp.name] = t
        else:
            args.append(t)
    return tuple(args), kwargs


def merge_type(plan: TrialPlan, types: Sequence[ValueType], path: str, device: str) -> ValueType:
    """One type from a value's concrete types in every run (the same in all runs: that type, as is).

    >>> plan = TrialPlan(("N",), ({"N": 11}, {"N": 13}))
    >>> str(merge_type(plan, [TensorType((3, 44)), TensorType((3, 52))], "stack", "cpu"))
    'f32[3, N*4]'
    """
    first = types[0]
    if all(t is first or t == first for t in types[1:]):
        return first
    return plan.merge(types, path, device)


_merge_type = merge_type


@dataclass(frozen=True, slots=True)
class Run:
    """What one replay recorded: the output's type, module output types by path, op types by block path."""

    output: ValueType
    modules: dict[str, ValueType]
    ops: dict[str, dict[str, ValueType]]


def merge_runs(plan: TrialPlan, runs: Sequence[Run], device: str) -> Run:
    """The runs' types merged value by value (values some run did not reach are left out).

    >>> plan = TrialPlan(("N",), ({"N": 11}, {"N": 13}))
    >>> a, b = (Run(TensorType((n, 3)), {"": TensorType((n, 3))}, {}) for n in (11, 13))
    >>> str(merge_runs(plan, [a, b], "cpu").output)
    'f32[N, 3]'
    """
    if len(runs) == 1:
        return runs[0]
    rest = runs[1:]
    memo: dict[tuple[ValueType, ...], ValueType] = {}  # repeated blocks repeat their types: merge each once
    by_id: dict[tuple[int, ...], ValueType] = {}  # the same type objects (type_of makes one per shape): no hashing

    def merge_type(plan: TrialPlan, types: list[ValueType], path: str, device: str) -> ValueType:
        ids = tuple(map(id, types))  # the runs keep every type alive while merging: ids are unique meanwhile
        got = by_id.get(ids)
        if got is not None:
            return got
        try:
            got = memo[tuple(types)]
        except KeyError:
            got = memo[tuple(types)] = _merge_type(plan, types, path, device)  # errors name the path: not kept
        except TypeError:  # a type holding something unhashable
            return _merge_type(plan, types, path, device)
        by_id[ids] = got
        return got

    modules = {p: merge_type(plan, [t, *(r.modules[p] for r in rest)], p, device)
               for p, t in runs[0].modules.items() if all(p in r.modules for r in rest)}
    ops: dict[str, dict[str, ValueType]] = {}
    for path, seen in runs[0].ops.items():
        others = [r.ops.get(path, {}) for r in rest]
        merged: dict[str, ValueType] = {}
        for name, t in seen.items():
            if all(name in o for o in others):
                try:
                    merged[name] = merge_type(plan, [t, *(o[name] for o in others)], path, device)
                except IRError as e:
                    why = str(e).removeprefix(f"{where(path)}: ")
                    raise IRError(f"{where(path)}, value {name!r}: {why}") from e
        ops[path] = merged
    return Run(merge_type(plan, [r.output for r in runs], "", device), modules, ops)


__all__ = ["Run", "example_inputs", "merge_runs", "merge_type", "trial_plan"]

"""The edges of a concrete trace: children stood in for by spies, the forward's inputs, its output.

``spied_children`` replaces each child (inside ModuleList/ModuleDict too) with a ``_Spy`` that records one
``ChildCall`` and runs the child unrecorded; ``traced_inputs`` binds the forward's parameters to graph
inputs and adds the guards the call's concrete arguments need (a None-default tensor given, a flag, the
count of ``*args``/``**kwargs`` or of a tuple's items); ``traced_output`` writes the returned value back
(a transformers ``ModelOutput`` as a dict, a namedtuple as a tuple).
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchgraft.frontends.fx_block import input_kind
from torchgraft.frontends.guards import count_guard, none_guard, value_guard
from torchgraft.frontends.symsize import pin
from torchgraft.ir.graph import ChildCall, Input, InputKind, Op
from torchgraft.ir.values import Arg, Const, DictArg, Seq

if TYPE_CHECKING:
    from torchgraft.frontends.concrete import _Recorder


class _Spy(nn.Module):
    """Stands in for a child while the parent is traced: records the call, runs it unrecorded.

    A Module itself, so containers can hold it (``self.layers[:n]`` builds a new ModuleList).
    """

    def __init__(self, target: nn.Module, path: str, rec: _Recorder) -> None:
        super().__init__()
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_rec", rec)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rec: _Recorder = self._rec
        rec.source.observe()
        a = tuple(rec.arg(x) for x in args)
        kw = tuple((k, rec.arg(v)) for k, v in kwargs.items())
        rec.depth += 1
        try:
            out = self._target(*args, **kwargs)
        finally:
            rec.depth -= 1
        name = rec.fresh(self._path.replace(".", "_"))
        rec.ops.append(Op(name, ChildCall(self._path), a, kw))
        rec.source.created(name)
        rec.register_output(out, name)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _PinningList(nn.ModuleList):
    """A ModuleList of spies whose slices guard the sizes they are cut at (``self.layers[: x.size(0)]``)."""

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, slice):
            pin(idx.start, idx.stop, idx.step)
        return super().__getitem__(idx)


def spied_children(mod: nn.Module, rec: _Recorder, prefix: str = "") -> dict[str, Any]:
    """``mod``'s children as spies recording their calls into ``rec`` (containers keep their kind)."""
    out: dict[str, Any] = {}
    for name, child in mod._modules.items():
        if child is None:
            out[name] = None
            continue
        path = f"{prefix}{name}"
        if type(child) in (nn.ModuleList, nn.ModuleDict):
            box = copy.copy(child)
            if type(child) is nn.ModuleList:
                box.__class__ = _PinningList
            object.__setattr__(box, "_modules", spied_children(child, rec, path + "."))
            out[name] = box
        else:
            out[name] = _Spy(child, path, rec)
    return out


def traced_inputs(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], rec: _Recorder
                  ) -> tuple[Input, ...]:
    """The graph inputs of ``mod.forward`` for this call, with the guards its concrete arguments need."""
    sig = inspect.signature(type(mod).forward)
    bound = sig.bind(mod, *args, **kwargs)
    P = inspect.Parameter
    out = []
    for pname in list(sig.parameters)[1:]:
        rec.count[pname] = 1  # inputs keep their names; ops named alike get a suffix
    for pname, p in list(sig.parameters.items())[1:]:
        kind = input_kind(p)
        value = bound.arguments.get(pname, p.default)
        if isinstance(value, torch.Tensor):
            rec.bind(value, pname)
            default = None if pname in bound.arguments or p.default is P.empty else Const(None)
            out.append(Input(pname, kind=kind, default=default))
            if p.default is None:  # the trace took the path for a given tensor
                rec.ops += none_guard(rec.fresh(f"{pname}_guard"), pname, rec.where, was_none=False)
        elif kind in (InputKind.VAR_POSITIONAL, InputKind.VAR_KEYWORD):
            out.append(Input(pname, kind=kind))
            items = list(value.items() if isinstance(value, dict) else
                         enumerate(value if value is not P.empty else ()))
            rec.ops += count_guard(rec.fresh(f"{pname}_guard"), pname, len(items), rec.where,
                                   kind is InputKind.VAR_KEYWORD)
            for key, x in items:  # tensors passed through *args/**kwargs are read back by index/key
                if isinstance(x, torch.Tensor):
                    rec.pending[id(x)] = (pname, key)
                    rec.keep.append(x)
        elif isinstance(value, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in value):
            out.append(Input(pname, kind=kind, default=None if pname in bound.arguments else Const(None)))
            for i, x in enumerate(value):  # tuples of tensors (rotary cos/sin): read back by index
                if isinstance(x, torch.Tensor):
                    rec.pending[id(x)] = (pname, i)
                    rec.keep.append(x)
            rec.ops += count_guard(rec.fresh(f"{pname}_guard"), pname, len(value), rec.where, keyword=False,
                                   what="items")
        else:
            try:  # non-tensor arguments specialise the trace: a guard checks they keep the traced value
                const = Const(value if value is not P.empty else None)
                default = None if p.default is P.empty else Const(p.default)  # the original's default
            except Exception:
                out.append(Input(pname, kind=kind, default=Const(None)))
                continue
            out.append(Input(pname, kind=kind, default=default))
            rec.ops += value_guard(rec.fresh(f"{pname}_guard"), pname, const.value, rec.where)
    return tuple(out)


def traced_output(out: Any, rec: _Recorder) -> Arg:
    """The forward's returned value as a graph output."""
    if hasattr(out, "to_tuple") and hasattr(out, "keys"):  # transformers ModelOutput: a dict, keys in order
        return DictArg(tuple((k, rec.arg(v)) for k, v in out.items()))
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return Seq(tuple(rec.arg(v) for v in out))
    return rec.arg(out)


__all__ = ["spied_children", "traced_inputs", "traced_output"]

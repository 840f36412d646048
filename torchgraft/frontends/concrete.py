"""Trace a forward that torch.fx cannot: run it on real inputs and record torch-level calls.

The fallback for forwards with kwargs-only inputs, input validation, cache objects or
``len()`` on sizes (every transformers model). The block's own Python runs for real
(its control flow is specialised to the example inputs, like ``torch.export``'s
non-strict mode); a ``TorchFunctionMode`` records each torch call it makes at the
public API level (``F.linear``, ``x.view``, ``a + b``), so the graph is already readable
and needs no lifting from ATen. Children are called through spies that record one
``ChildCall`` each and run the child unrecorded, so children stay children.

Reading a tensor's value into Python (``if x.sum() > 0``, ``.item()``) raises
``DataDependent``: such a forward is not specialised silently, it stays opaque.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from torchgraft.frontends.cache_free import CACHE_HINT, is_cache
from torchgraft.frontends.canon import canonical_target
from torchgraft.frontends.concrete_io import spied_children, traced_inputs, traced_output
from torchgraft.frontends.flip_guard import flip_run
from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.guard_relax import Traced, relax_guards
from torchgraft.frontends.guards import bool_check, dtype_check, size_guard, where_text
from torchgraft.frontends.source_names import SourceNames, forward_code, with_hints
from torchgraft.frontends.state import own_view
from torchgraft.frontends.symsize import _RECORDER, SymInt, SymSize, call_site, pinning_range
from torchgraft.ir.functions import qualname_of
from torchgraft.ir.graph import FunctionCall, GetAttr, Graph, MethodCall, Op, Target
from torchgraft.ir.values import Arg, Const, DictArg, Ref, Seq, Slice

_DATA_DEPENDENT = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy", "__array__", "equal",
                   "allclose", "is_nonzero"}
_INT_METHODS = {"__len__": "__len__", "numel": "numel", "dim": "dim", "ndimension": "dim", "ndim": "dim",
                "nelement": "numel"}
"""Tensor methods and properties returning an int that depends on the input's shape: kept symbolic."""
_SHAPE_BOOLS = frozenset({"is_contiguous", "is_floating_point", "is_complex", "is_signed", "is_same_size"})
"""Tensor methods whose bool follows shape, layout or dtype: guarded where the forward reads them (device and
autograd flags such as ``is_cuda``/``requires_grad`` are not: a model captured on CPU under no_grad is run on
GPU and trained; ``docs/faithful.md`` lists that gap)."""
_REVERSED = {"__radd__": "add", "__rsub__": "sub", "__rmul__": "mul", "__rtruediv__": "truediv",
             "__rfloordiv__": "floordiv", "__rpow__": "pow", "__rmatmul__": "matmul", "__rand__": "and_",
             "__ror__": "or_", "__rmod__": "mod"}


class DataDependent(TraceError):
    """The forward read a tensor's value into Python control flow."""


class _Recorder(TorchFunctionMode):
    """Records top-level torch calls as Ops; values are tracked by tensor identity."""

    def __init__(self, block: nn.Module, where: str = "") -> None:
        super().__init__()
        self.where = where_text(where, type(block).__name__)
        self.devices: dict[torch.device, Arg] = {}
        self.dtype_checked: set[str] = set()
        self.ops: list[Op] = []
        self.names: dict[int, str] = {}
        self.keep: list[Any] = []
        self.depth = 0
        self.count: dict[str, int] = {}
        self.taken: set[str] = set()
        self.pending: dict[int, tuple[str, int | str]] = {}
        self.state = {id(t): n for n, t in list(block.named_parameters(remove_duplicate=False))
                      + list(block.named_buffers(remove_duplicate=False))}
        self.source = SourceNames(None, None, self.value_name)  # concrete_trace sets the real one
        self.flip: frozenset[int] = frozenset()
        self.branches: list[int] = []
        self.compares = 0

    def value_name(self, value: Any) -> str | None:
        """The name of a recorded tensor (``op.key`` for an item of op's result not read yet), else None."""
        if not isinstance(value, torch.Tensor):
            return None
        if id(value) in self.pending:
            src, key = self.pending[id(value)]
            return f"{src}.{key}"
        return self.names.get(id(value))

    def fresh(self, base: str) -> str:
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in base).strip("_").lower() or "v"
        if base[0].isdigit():
            base = "v" + base
        n = self.count.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in self.taken:  # ``meshgrid_1`` asked for after two ``meshgrid``s
            n += 1
            name = f"{base}_{n}"
        self.count[base] = n + 1
        self.taken.add(name)
        return name

    def bind(self, value: Any, name: str) -> None:
        self.names[id(value)] = name
        self.keep.append(value)

    def arg(self, v: Any) -> Arg:
        if isinstance(v, SymInt):
            return Ref(v.name())
        if isinstance(v, torch.Tensor):
            return Ref(self._tensor_name(v))
        if isinstance(v, (tuple, list)) and not isinstance(v, torch.Size):
            return Seq(tuple(self.arg(x) for x in v), isinstance(v, list))
        if isinstance(v, torch.Size):
            return Seq(tuple(self.arg(x) for x in v))
        if isinstance(v, slice):
            return Slice(self.arg(v.start), self.arg(v.stop), self.arg(v.step))
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return DictArg(tuple((k, self.arg(x)) for k, x in v.items()))
        if isinstance(v, torch.device):
            return self.device_arg(v)
        try:
            return Const(v)
        except Exception:
            hint = "; ".join(("", CACHE_HINT)) if is_cache(v) else ""
            raise TraceError(f"the forward passes a {type(v).__name__} to a torch call; "
                             f"only tensors and plain constants can be recorded{hint}") from None

    def _tensor_name(self, t: torch.Tensor) -> str:
        if id(t) in self.names:
            return self.names[id(t)]
        if id(t) in self.pending:
            src, idx = self.pending.pop(id(t))
            name = self.fresh(idx if isinstance(idx, str) else f"{src}_{idx}")
            self.ops.append(Op(name, FunctionCall("operator.getitem"), (Ref(src), Const(idx))))
            self.source.rename(f"{src}.{idx}", name)
            self.bind(t, name)
            return name
        if id(t) in self.state:
            path = self.state[id(t)]
            name = self.fresh(path.replace(".", "_"))
            self.ops.append(Op(name, GetAttr(path)))
            self.bind(t, name)
            return name
        raise TraceError(f"the forward uses a tensor of shape {tuple(t.shape)} that is neither an input, a "
                         "parameter/buffer, nor computed in the forward (a global or cached tensor)")

    def compare(self, opname: str, a: Any, b: Any, held: bool, site: str, loop: bool = False,
                branch: bool = False) -> bool:
        """A size was compared in the block's own code: guard that it compares the same at run time
        (``loop``: ``a`` is the trip count of an unrolled ``range`` loop, pinned to ``b``). Returns the
        truth the forward goes on with: ``held``, or its negation for a comparison (``branch``) whose
        index is in ``flip`` (``frontends.guard_relax`` asks whether the other branch traces alike)."""
        if self.depth:
            return held  # inside a child or a torch function: their own traces or kernels handle it
        left, right = self.arg(a), self.arg(b)
        if isinstance(left, Const) and isinstance(right, Const):
            return held
        index, self.compares = self.compares, self.compares + 1
        if branch and not loop:
            self.branches.append(index)
            held = held != (index in self.flip)
        self.ops += size_guard(self.fresh("size_guard"), opname, left, right, held, self.where, site, loop)
        return held

    def device_arg(self, device: torch.device) -> Arg:
        """A device the forward passed to a torch call: the device of an input or parameter that is
        on it (``x.device``), so the emitted model follows its inputs; a constant only when none is."""
        if device in self.devices:
            return self.devices[device]
        for value in self.keep:
            if isinstance(value, torch.Tensor) and value.device == device and id(value) in self.names:
                name = self.fresh("device")
                self.ops.append(Op(name, FunctionCall("builtins.getattr"), (Ref(self.names[id(value)]),
                                                                             Const("device"))))
                self.devices[device] = Ref(name)
                return Ref(name)
        return Const(device)

    def int_op(self, opname: str, a: Any, b: Any) -> str:
        """Record ``a <op> b`` on sizes; returns the value's name."""
        name = self.fresh(opname)
        self.ops.append(Op(name, FunctionCall(f"operator.{opname}"), (self.arg(a), self.arg(b))))
        return name

    def int_method(self, t: torch.Tensor, method: str) -> str:
        """Record ``len(t)``/``t.numel()``/``t.dim()``; returns the value's name."""
        name = self.fresh(method.strip("_") if method != "__len__" else "length")
        if method == "__len__":
            self.ops.append(Op(name, FunctionCall("builtins.len"), (Ref(self._tensor_name(t)),)))
        else:
            self.ops.append(Op(name, MethodCall(method), (Ref(self._tensor_name(t)),)))
        return name

    def size_of(self, t: torch.Tensor, dim: int) -> str:
        """Record ``t.size(dim)``; returns the value's name."""
        name = self.fresh("size")
        self.ops.append(Op(name, MethodCall("size"), (Ref(self._tensor_name(t)), Const(dim))))
        return name

    def sym_size(self, t: torch.Tensor, out: Any, dim: Any = None) -> Any:
        """Wrap what ``x.shape``/``x.size(...)`` returned so the sizes stay symbolic."""
        if isinstance(out, int):  # x.size(-1) stays x.size(-1): right for inputs of another rank too
            return SymInt(out, functools.partial(self.size_of, t, dim))
        rank = len(out)
        return SymSize(tuple(SymInt(n, functools.partial(self.size_of, t, d)) for d, n in enumerate(out)),
                       tuple(SymInt(n, functools.partial(self.size_of, t, d - rank)) for d, n in enumerate(out)))

    def record(self, target: Target, base: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        self.source.observe()  # before the arguments: reading an item of a tuple records its getitem
        a = tuple(self.arg(x) for x in args)
        kw = tuple((k, self.arg(v)) for k, v in kwargs.items())
        target, a, kw = canonical_target(target, a, kw)
        name = self.fresh(base)
        self.ops.append(Op(name, target, a, kw))
        self.source.created(name)
        self.register_output(out, name)

    def register_output(self, out: Any, name: str) -> None:
        """Bind a call's result; items of tuples and dicts (ModelOutput) get ``name[i]`` ops when used."""
        if isinstance(out, torch.Tensor):
            self.bind(out, name)
            return
        items: list[tuple[int | str, Any]] = []
        if isinstance(out, (tuple, list)):
            items = list(enumerate(out))
        elif isinstance(out, dict):
            items = [(k, v) for k, v in out.items() if isinstance(k, str)]
        for key, x in items:
            if isinstance(x, torch.Tensor) and id(x) not in self.names:
                self.pending[id(x)] = (name, key)
                self.keep.append(x)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.depth:
            return func(*args, **kwargs)
        fname = getattr(func, "__name__", "")
        if fname in _DATA_DEPENDENT and args and isinstance(args[0], torch.Tensor):
            raise DataDependent(f"the forward reads a tensor's value into Python ({fname}); "
                                "its control flow depends on the data")
        self.depth += 1  # the function's own Python (F.interpolate) is not the block's code
        try:
            out = func(*args, **kwargs)
        finally:
            self.depth -= 1
        attr = getattr(getattr(func, "__self__", None), "__name__", "") if fname == "__get__" else ""
        if args and isinstance(args[0], torch.Tensor) and (fname == "size" or attr == "shape"):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return self.sym_size(args[0], out, dim)
        key = attr if fname == "__get__" else fname
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, int) and key in _INT_METHODS:
            value = SymInt(out, functools.partial(self.int_method, args[0], _INT_METHODS[key]))
            if key == "__len__":  # len() turns any int into a plain one: guard the length instead
                self.compare("eq", value, out, True, call_site())
            return value
        if attr == "dtype" and args and isinstance(args[0], torch.Tensor) and not self.depth:
            self.dtype_guard(args[0], out)
        out = _distinct(out, args, fname)
        self._record_call(func, fname, args, kwargs, out)
        if type(out) is bool and key in _SHAPE_BOOLS and args and isinstance(args[0], torch.Tensor):
            self.bool_guard(func, key, args, out)
        return out

    def bool_guard(self, func: Callable[..., Any], what: str, args: tuple[Any, ...], value: bool) -> None:
        """A tensor method gave a bool that follows the input's shape, layout or dtype (``x.is_contiguous()``):
        what the forward decides from it holds for inputs that give the same, so guard that."""
        target, call_args, base = self._target(func, what, args)
        self.record(target, base, call_args, {}, value)
        read = self.ops[-1].name
        self.ops += bool_check(self.fresh("bool_guard"), Ref(read), what + "()", value, self.where, call_site())

    def dtype_guard(self, t: torch.Tensor, dtype: torch.dtype) -> None:
        """The forward read ``t.dtype``: what it decides from it (a branch, ``torch.finfo``, a cast) holds
        for this dtype only, so guard it (once per value)."""
        name = self._tensor_name(t)
        if name in self.dtype_checked:
            return
        self.dtype_checked.add(name)
        dt = self.fresh(f"{name}_dtype")
        self.ops.append(Op(dt, FunctionCall("builtins.getattr"), (Ref(name), Const("dtype"))))
        self.ops += dtype_check(self.fresh("dtype_guard"), Ref(dt), dtype, self.where, call_site())

    def _record_call(self, func: Callable[..., Any], fname: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                     out: Any) -> None:
        if fname == "__iter__":
            raise TraceError("the forward iterates over a tensor; not supported by the fallback tracer")
        if fname == "__get__" and args and isinstance(args[0], torch.Tensor):
            attr = getattr(getattr(func, "__self__", None), "__name__", "")
            if isinstance(out, torch.Tensor) and attr.isidentifier():  # x.T, x.mT, x.real ...
                self.record(FunctionCall("builtins.getattr"), attr, (args[0], attr), {}, out)
            return  # other attribute reads (x.shape, x.dtype) are baked as constants
        tensors_out = isinstance(out, torch.Tensor) or (
            isinstance(out, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in out))
        if fname == "__setitem__":  # in place: later uses keep reading the same (mutated) value
            self.record(FunctionCall("operator.setitem"), "setitem", args, kwargs, None)
        elif tensors_out:
            target, call_args, base = self._target(func, fname, args)
            self.record(target, base, call_args, kwargs, out)

    def _target(self, func: Callable[..., Any], fname: str, args: tuple[Any, ...]
                ) -> tuple[Target, tuple[Any, ...], str]:
        qual = qualname_of(func)
        if qual is not None:
            return FunctionCall(qual), args, fname
        if fname in _REVERSED and len(args) == 2:
            return FunctionCall(f"operator.{_REVERSED[fname]}"), (args[1], args[0]), _REVERSED[fname]
        if fname.startswith("__") and fname.endswith("__"):
            op_name = fname.strip("_")
            if op_name.startswith("i") and hasattr(operator, op_name):
                return FunctionCall(f"operator.{op_name}"), args, op_name[1:]
            if hasattr(operator, op_name) or hasattr(operator, op_name + "_"):
                op_name = op_name if hasattr(operator, op_name) else op_name + "_"
                return FunctionCall(f"operator.{op_name}"), args, op_name.rstrip("_")
        if getattr(torch.Tensor, fname, None) is not None and args and isinstance(args[0], torch.Tensor):
            return MethodCall(fname), args, fname
        raise TraceError(f"the forward calls {getattr(func, '__qualname__', func)!r}, which is not a public "
                         "torch function torchgraft can write back")


_IN_PLACE = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                       "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
                       "__imatmul__", "__get__"})


def _distinct(out: Any, args: tuple[Any, ...], fname: str) -> Any:
    """A call that returned one of its own tensor arguments unchanged (``x.to(x.dtype)``, ``x.contiguous()``,
    ``x.float()`` on a float) as a new view of it: values are tracked by identity, and the forward's next
    read of ``x`` must not become a read of ``y = x.to(...)``, which is another tensor for other inputs."""
    if not isinstance(out, torch.Tensor) or fname in _IN_PLACE or fname.endswith("_"):
        return out
    if any(out is a for a in args):
        try:
            return out.view_as(out)
        except RuntimeError:
            return out
    return out


@contextlib.contextmanager
def export_flags() -> Iterator[None]:
    """Tell library code it is being exported (as non-strict torch.export does), so it takes its
    trace-friendly paths instead of data-dependent fast paths (transformers' mask checks)."""
    import torch.compiler as tc

    saved = tc._is_compiling_flag, tc._is_exporting_flag
    tc._is_compiling_flag = tc._is_exporting_flag = True
    try:
        yield
    finally:
        tc._is_compiling_flag, tc._is_exporting_flag = saved


def concrete_trace(mod: nn.Module, training: bool, args: tuple[Any, ...], kwargs: dict[str, Any],
                   where: str = "", others: Sequence[tuple[tuple[Any, ...], dict[str, Any]]] = ()) -> Graph:
    """Run ``mod.forward`` on the recorded inputs with torch calls recorded; the Graph of its own code.

    What the run decided from concrete values (None arguments, flags, size comparisons) is kept
    as ``Guard`` ops (``frontends.guards``); ``where`` is the module's path, for their messages.
    A size comparison whose other outcome traces to the same graph guards nothing and is relaxed
    (``frontends.guard_relax``); ``others`` are the module's other calls (args, kwargs), over all
    examples, whose traces show comparisons coming out the other way on real data."""
    calls = [(args, kwargs), *_distinct_calls(others, (args, kwargs))]
    return relax_guards([functools.partial(_trace, mod, training, a, kw, where) for a, kw in calls],
                        where_text(where, type(mod).__name__))


def _distinct_calls(calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
                    first: tuple[tuple[Any, ...], dict[str, Any]], most: int = 3
                    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Up to ``most`` of ``calls`` whose tensors' shapes (or other values) differ from ``first``'s and each other's."""
    def key(call: tuple[tuple[Any, ...], dict[str, Any]]) -> str:
        a, kw = call
        return repr([tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                     for v in [*a, *kw.values()]] + sorted(kw))
    seen = {key(first)}
    out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for call in calls:
        if key(call) not in seen and len(out) < most:
            seen.add(key(call))
            out.append(call)
    return out


def _trace(mod: nn.Module, training: bool, args: tuple[Any, ...], kwargs: dict[str, Any], where: str,
           flip: frozenset[int]) -> Traced:
    """One trace of ``mod.forward`` with the size comparisons at the indices in ``flip`` flipped: on copies of
    the inputs, failing if the flipped run raised (even if caught) or changed Python state
    (``frontends.flip_guard``)."""
    if not flip:
        return _run(mod, training, args, kwargs, where, flip)
    with flip_run(mod, args, kwargs) as (a, kw, outcome):
        traced = _run(mod, training, a, kw, where, flip)
    if outcome.failed:
        raise TraceError(f"the flipped branch is no evidence: {'; '.join(outcome.why[:3])}")
    return traced


def _run(mod: nn.Module, training: bool, args: tuple[Any, ...], kwargs: dict[str, Any], where: str,
         flip: frozenset[int]) -> Traced:
    view = own_view(mod)
    object.__setattr__(view, "training", training)
    rec = _Recorder(mod, where)
    rec.flip = flip
    object.__setattr__(view, "_modules", spied_children(mod, rec))
    inputs = traced_inputs(mod, args, kwargs, rec)
    rec.source = SourceNames(sys._getframe(), forward_code(type(mod).forward), rec.value_name,
                             frozenset(i.name for i in inputs))
    _RECORDER.value = rec
    drawn = random.getstate()
    try:
        with torch.no_grad(), export_flags(), pinning_range(), rec:
            out = type(mod).forward(view, *args, **kwargs)
        if random.getstate() != drawn:  # Python's random: not a torch call, its draw would be baked
            random.setstate(drawn)
            raise TraceError(f"{type(mod).__qualname__}.forward draws from Python's random module, which a "
                             "trace would bake as a constant")
        rec.source.finish()
        output = traced_output(out, rec)
        return Traced(Graph(inputs, with_hints(rec.ops, rec.source.hints), output), tuple(rec.branches))
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"tracing {type(mod).__qualname__}.forward on its recorded inputs failed: "
                         f"{type(e).__name__}: {e}") from e
    finally:
        _RECORDER.value = None

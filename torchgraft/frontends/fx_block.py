"""Trace one module's own ``forward`` with torch.fx (children stay calls) into a Graph."""

from __future__ import annotations

import ast
import collections
import functools
import inspect
import math
import operator
import random
import sys
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx._symbolic_trace import _assert_is_none

from torchgraft.frontends.canon import canonical_target
from torchgraft.frontends.fx_session import SessionTracer
from torchgraft.frontends.guards import none_guard, where_text
from torchgraft.frontends.helpers import HelperError, collect, is_fx_wrapper, unpatched
from torchgraft.frontends.sigcache import signature
from torchgraft.frontends.source_names import SourceNames, forward_code
from torchgraft.frontends.state import method_tree, own_view
from torchgraft.ir.functions import helper_qualname, qualname_of
from torchgraft.ir.graph import ChildCall, FunctionCall, GetAttr, Graph, Input, InputKind, MethodCall, Op, Target
from torchgraft.ir.model import Helper
from torchgraft.ir.opkinds import activation_of
from torchgraft.ir.values import Arg, ByMode, Const, Ref, Seq, Slice, Training, rename_refs


class TraceError(Exception):
    """fx could not trace the forward, or its graph uses something the IR cannot hold."""


class ModeRead(TraceError):
    """The forward reads ``self.training``: it must be traced once per mode."""


class _ModeProbe:
    """Stands in for ``self.training`` in a trace meant to serve both modes: any use of it
    (``if self.training``, ``not self.training``, formatting it) marks it read and raises
    ``ModeRead``, so the block is traced once per mode instead. Passed on unread as an argument of
    a recorded call (``F.dropout(x, p, self.training)``), as is or in a list/tuple, it becomes
    ``Training()`` there: what merging the two modes' traces makes of their True/False
    (``merge_training``), so the one trace equals the two merged; anywhere else (a slice, a dict,
    the output, an activation's flag) it raises ``ModeRead`` too."""

    __slots__ = ("read",)

    def __init__(self) -> None:
        self.read = False

    def _use(self, *args: Any, **kwargs: Any) -> Any:
        self.read = True
        raise ModeRead("the forward reads self.training")

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = _use  # type: ignore[assignment]
    __int__ = __index__ = __float__ = __and__ = __or__ = __xor__ = __rand__ = __ror__ = __invert__ = _use
    __str__ = __format__ = __call__ = _use  # type: ignore[assignment]


_AUGMENTED = {operator.add: "operator.iadd", operator.sub: "operator.isub", operator.mul: "operator.imul",
              operator.truediv: "operator.itruediv"}
_AUG_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@functools.lru_cache(maxsize=1024)
def augmented_lines(fn: Any) -> dict[int, Any]:
    """Line -> operator of each ``a += b``-style statement in ``fn``'s source (first lines of statements)."""
    tree = method_tree(fn)  # parsed from the line co_firstlineno on
    code = getattr(fn, "__code__", None)
    if tree is None or code is None:
        return {}
    return {node.lineno + code.co_firstlineno - 1: _AUG_OPS[type(node.op)] for node in ast.walk(tree)
            if isinstance(node, ast.AugAssign) and type(node.op) in _AUG_OPS}


class _OwnCodeTracer(SessionTracer):
    """Treat every submodule as a leaf, so only the block's own code is traced.

    fx's default wraps every function of ``math`` at each trace (so ``math.sqrt(x.size(-1))``
    traces), which is most of the cost of tracing a small forward; ``math_autowrap=False``
    skips it, and ``trace_graph`` retries with it when a math call meets a Proxy.

    fx reads buffers as real tensors, so ``self.mean.mul_(0.9)`` would run on the user's model
    during the trace and be missing from the graph: capture sends forwards that update a buffer
    in place to the fallback trace instead (``frontends.state.updated_buffers``).
    """

    def __init__(self, root: nn.Module, math_autowrap: bool = True, names: SourceNames | None = None) -> None:
        super().__init__(autowrap_modules=(math,) if math_autowrap else ())  # type: ignore[arg-type]
        self._root = root
        self._code = getattr(type(root).forward, "__code__", None)
        self.names = names

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Proxy:
        """fx's proxy; arithmetic remembers its line in the forward, so ``out += x`` can be told from
        ``out = out + x`` (fx proxies have no ``__iadd__``: both reach fx as ``operator.add``); a call of a
        ``torch.fx.wrap``-ed function made straight from the forward remembers its bytecode offset
        (``torchgraft_at``: ``trace_template``); every node is shown to ``names``, which learns the source
        variables values are assigned to."""
        if self.names is not None:
            self.names.observe()
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        if self.names is not None:
            self.names.created(proxy.node.name)
        if kind == "call_function" and self._code is not None:
            wrapper = sys._getframe(1)
            if is_fx_wrapper(wrapper.f_code) and wrapper.f_back is not None and wrapper.f_back.f_code is self._code:
                proxy.node.meta["torchgraft_at"] = wrapper.f_back.f_lasti
        if kind == "call_function" and target in _AUGMENTED and self._code is not None:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code is not self._code:
                frame = frame.f_back  # type: ignore[assignment]
            if frame is not None:
                proxy.node.meta["torchgraft_line"] = frame.f_lineno
        return proxy

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root

    def create_arg(self, a: Any) -> Any:
        """fx's, except that the probe for ``self.training`` stays itself (``to_graph`` reads it as ``Training()``)."""
        return a if isinstance(a, _ModeProbe) else super().create_arg(a)


def _passes_mode(node: fx.Node) -> bool:
    """Whether the probe for ``self.training`` is among ``node``'s arguments."""
    return _holds_probe((node.args, node.kwargs))


def _holds_probe(value: Any) -> bool:
    found: list[Any] = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, _ModeProbe) else None)
    return bool(found)


def _arg(a: Any, block: nn.Module, mode: bool = False) -> Arg:
    """``mode``: the probe standing for ``self.training`` may be passed here (a call's argument, as is
    or in a list/tuple): it is ``Training()``, what merging the two modes' traces makes of True/False."""
    if isinstance(a, fx.Node):
        return Ref(a.name)
    if isinstance(a, (tuple, list)):
        return Seq(tuple(_arg(x, block, mode) for x in a), is_list=isinstance(a, list))
    if isinstance(a, slice):
        return Slice(_arg(a.start, block), _arg(a.stop, block), _arg(a.step, block))
    if isinstance(a, _ModeProbe):
        if mode:
            return Training()
        raise ModeRead("the forward passes self.training where one trace cannot stand for both modes")
    if isinstance(a, torch.Tensor):
        raise TraceError("the forward bakes a tensor constant into the graph")
    try:
        return Const(a)
    except Exception as e:
        if _holds_probe(a):
            raise ModeRead("the forward passes self.training inside a value") from None
        raise TraceError(f"unsupported argument {a!r}: {e}") from None


def to_arg(value: Any) -> Arg:
    """How ``to_graph`` writes a plain value passed to a call (a number, string, list or tuple of them)."""
    return _arg(value, _NO_BLOCK, True)


_NO_BLOCK = nn.Module()  # ``_arg`` passes its block on, and reads nothing of it


def _target(node: fx.Node, helpers: dict[str, Helper], fns: dict[str, Any]) -> Target:
    if node.op == "call_module":
        return ChildCall(str(node.target))
    if node.op == "get_attr":
        return GetAttr(str(node.target))
    if node.op == "call_method":
        return MethodCall(str(node.target))
    fn = node.target
    name = qualname_of(fn)  # type: ignore[arg-type]
    if name is not None:
        return FunctionCall(name)
    try:
        hname = collect(fn, helpers)  # type: ignore[arg-type]
        fns[hname] = fn
        return FunctionCall(helper_qualname(hname))
    except HelperError as e:
        raise TraceError(f"forward calls {getattr(fn, '__qualname__', fn)!r}, which cannot be copied: {e}") from None


def input_kind(p: inspect.Parameter) -> InputKind:
    """How a forward parameter is passed, as an IR InputKind."""
    kinds: dict[inspect._ParameterKind, InputKind] = {inspect.Parameter.VAR_POSITIONAL: InputKind.VAR_POSITIONAL,
             inspect.Parameter.VAR_KEYWORD: InputKind.VAR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY: InputKind.KEYWORD}
    return kinds.get(p.kind, InputKind.POSITIONAL)


def _inputs(mod: nn.Module, graph: fx.Graph) -> tuple[Input, ...]:
    sig = signature(type(mod).forward)
    params = list(sig.parameters.values())
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]  # self, whatever it is called
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    out = []
    for _node, p in zip(placeholders, params):
        default = None if p.default is inspect.Parameter.empty else _arg(p.default, mod)
        if default is not None and not isinstance(default, Const):
            raise TraceError(f"default of forward argument {p.name!r} is not a constant")
        out.append(Input(p.name, kind=input_kind(p), default=default))
    if len(placeholders) != len(params):
        raise TraceError("forward signature does not match the traced placeholders")
    return tuple(out)


def to_graph(gm_graph: fx.Graph, mod: nn.Module, helpers: dict[str, Helper], fns: dict[str, Any],
             given: tuple[str, ...] = (), where: str = "", hints: dict[str, str] | None = None) -> Graph:
    """Convert a traced fx graph of ``mod`` into an IR Graph.

    fx's ``_assert_is_none`` checks (arguments traced as None) become Guards, and so do the
    arguments in ``given``: optional ones the trace took as given (every fx Proxy is "not None").
    ``hints``: node name -> the source variable it was assigned to (``Op.source_var``)."""
    ops: list[Op] = []
    output: Arg = Const(None)
    inputs = _inputs(mod, gm_graph)
    placeholders = [n.name for n in gm_graph.nodes if n.op == "placeholder"]
    ren = _renames(gm_graph, placeholders, inputs)
    label = where_text(where, type(mod).__name__)
    augmented = augmented_lines(type(mod).forward) if any(
        "torchgraft_line" in n.meta for n in gm_graph.nodes) else {}
    for name in given:
        ops += none_guard(f"{name}_guard", name, label, was_none=False)
    for node in gm_graph.nodes:
        if unpatched(node.target) is _assert_is_none:  # inside a session fx's functions are wrapped
            checked = rename_refs(_arg(node.args[0], mod), ren)
            if isinstance(checked, Ref):
                ops += none_guard(node.name, checked.name, label, was_none=True)
            continue
        if node.op == "placeholder":
            continue
        if node.op == "output":
            output = rename_refs(_arg(node.args[0], mod), ren)
            continue
        target = _target(node, helpers, fns)
        if augmented.get(node.meta.get("torchgraft_line", -1)) is node.target and node.target in _AUGMENTED:
            target = FunctionCall(_AUGMENTED[node.target])  # the source wrote it in place: out += identity
        args = tuple(rename_refs(_arg(a, mod, True), ren) for a in node.args)
        kwargs = tuple((k, rename_refs(_arg(v, mod, True), ren)) for k, v in node.kwargs.items())
        if _passes_mode(node) and activation_of(target) is not None:
            raise ModeRead("an activation takes self.training")  # canonical per mode: traced per mode
        target, args, kwargs = canonical_target(target, args, kwargs)
        if target == FunctionCall("torch._assert"):
            args = tuple(_clean_message(a) for a in args)
        ops.append(Op(ren.get(node.name, node.name), target, args, kwargs, source_var=(hints or {}).get(node.name, "")))
    return Graph(inputs, tuple(ops), output)


def _renames(gm_graph: fx.Graph, placeholders: list[str], inputs: tuple[Input, ...]) -> dict[str, str]:
    """fx node name -> IR value name: placeholders take their parameter's name (fx calls a placeholder
    ``position_ids_1`` when a buffer read took ``position_ids``), and any other node whose name is now an
    input's gets a fresh one. One simultaneous map: every reference to a node is renamed with the node."""
    ren = {ph: inp.name for ph, inp in zip(placeholders, inputs) if ph != inp.name}
    names = {i.name for i in inputs}
    taken = {n.name for n in gm_graph.nodes} | names
    for node in gm_graph.nodes:
        if node.op not in ("placeholder", "output") and node.name in names:
            new = node.name + "_"
            while new in taken:
                new += "_"
            taken.add(new)
            ren[node.name] = new
    return ren


def _clean_message(a: Arg) -> Arg:
    """An assert message that an f-string formatted with fx Proxies ("Proxy(getitem_2)") reads wrong: drop those."""
    if isinstance(a, Const) and isinstance(a.value, str) and "Proxy(" in a.value:
        import re

        return Const(re.sub(r"Proxy\([^)]*\)", "?", a.value))
    return a


_NOT_GENERATORS = frozenset({bool, int, float, str, bytes, type(None), dict, list, tuple, set, frozenset,
                             collections.OrderedDict, torch.Tensor, nn.Parameter, torch.dtype, torch.device})
"""Exact types no ``torch.Generator`` (nor a wrapper ``isinstance`` counts as one) can be: their values skip the
slow ``isinstance`` check (``torch.Generator``'s metaclass runs Python for every check)."""


def _generators(mod: nn.Module) -> list[torch.Generator]:
    """The ``torch.Generator`` objects the modules of ``mod``'s tree (each once) hold as attributes."""
    seen: set[int] = set()
    todo, out = [mod], []
    while todo:
        m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        held = vars(m).values()
        if not _NOT_GENERATORS.issuperset(map(type, held)):  # most modules hold only such values: skipped whole
            out += [v for v in held if type(v) not in _NOT_GENERATORS and isinstance(v, torch.Generator)]
        todo += [c for c in m._modules.values() if c is not None]
    return out


def _rng_states(gens: list[torch.Generator]) -> list[tuple[Any, Any]]:
    """(source, state) of every RNG a forward may draw from without a traced argument: torch's default CPU
    generator, Python's ``random``, and ``gens`` (the generators the module's tree holds: ``_generators``)."""
    return [(None, torch.random.get_rng_state()), (random, random.getstate()),
            *((g, g.get_state()) for g in gens)]


def _same_rng(before: list[tuple[Any, Any]], after: list[tuple[Any, Any]]) -> bool:
    return all(a[0] is b[0] and (torch.equal(a[1], b[1]) if isinstance(a[1], torch.Tensor) else a[1] == b[1])
               for a, b in zip(before, after))


def _put_rng(states: list[tuple[Any, Any]]) -> None:
    for source, state in states:
        if source is None:
            torch.random.set_rng_state(state)
        elif source is random:
            random.setstate(state)
        else:
            source.set_state(state)


def trace_graph(mod: nn.Module, training: bool | None, helpers: dict[str, Helper], fns: dict[str, Any],
                none_args: tuple[str, ...] = (), given_args: tuple[str, ...] = (), where: str = "",
                keep: list[tuple[fx.Graph, dict[str, str]]] | None = None) -> tuple[Graph, dict[str, torch.Tensor]]:
    """Trace ``mod.forward`` in the given mode, without touching ``mod`` itself.

    ``training=None`` traces with a probe in place of the flag: the graph then serves both
    modes (the flag passed on to a call is ``Training()`` there), and a forward that uses
    ``self.training`` otherwise raises ``ModeRead`` (trace it once per mode instead; an ``is True``
    test, which a probe cannot see, sends the forward to its copied source first: ``frontends.mode_reads``).
    Returns the graph
    and the tensor constants fx baked into it (``_tensor_constant0``), which the caller
    keeps as non-persistent buffers. ``none_args`` are optional arguments that were None
    when the model ran: fx specialises ``if arg is None`` branches on them (every fx Proxy
    is "not None", so without this the other branch would be traced). Both become Guards, as do
    ``given_args`` (optional arguments that were given); ``where`` is the module path for their messages.
    ``keep`` receives the fx graph and its source hints (for ``trace_template``).
    """
    view = own_view(mod)  # shallow: own __dict__ and state slots, so the original is left alone
    probe = _ModeProbe()
    object.__setattr__(view, "training", probe if training is None else training)
    concrete = {n: None for n in none_args} or None
    names = _source_names(mod)
    gens = _generators(mod)
    rng = _rng_states(gens)
    try:
        try:
            graph = _OwnCodeTracer(view, math_autowrap=False, names=names).trace(view, concrete_args=concrete)
        except TypeError:  # maybe a math function met a Proxy (its message is all that says so): retry with them
            if probe.read:
                raise
            names = _source_names(mod)
            graph = _OwnCodeTracer(view, names=names).trace(view, concrete_args=concrete)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds
        if probe.read or "_ModeProbe" in str(e):
            raise ModeRead(f"{type(mod).__qualname__}.forward reads self.training") from e
        raise TraceError(f"torch.fx could not trace {type(mod).__qualname__}.forward: {type(e).__name__}: {e}") from e
    if probe.read:  # the forward caught the probe's exception: its graph may follow either mode
        raise ModeRead(f"{type(mod).__qualname__}.forward reads self.training")
    if not _same_rng(rng, _rng_states(gens)):  # torch.rand(3): run once by fx, its draw baked
        _put_rng(rng)
        raise TraceError(f"{type(mod).__qualname__}.forward draws random numbers with no traced argument "
                         "(torch.rand(3)): torch.fx runs such a call once and bakes its result")
    consts = {}
    for node in graph.nodes:
        if node.op == "get_attr" and "." not in str(node.target) and not hasattr(mod, str(node.target)):
            value = getattr(view, str(node.target))
            if not isinstance(value, torch.Tensor):
                raise TraceError(f"forward reads a constant {node.target!r} of type {type(value).__name__}")
            consts[str(node.target)] = value.detach().clone()
    names.finish()
    if keep is not None:
        keep.append((graph, names.hints))
    return to_graph(graph, mod, helpers, fns, given_args, where, names.hints), consts


def _source_names(mod: nn.Module) -> SourceNames:
    """A ``SourceNames`` for tracing ``mod.forward`` from the calling frame (fx Proxies name fx nodes)."""
    def lookup(value: Any) -> str | None:
        return value.node.name if isinstance(value, fx.Proxy) else None

    forward = type(mod).forward
    return SourceNames(sys._getframe(1), forward_code(forward), lookup, _param_names(forward))


def _param_names(forward: Any) -> frozenset[str]:
    try:
        return frozenset(signature(forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def merge_training(train: Graph, evaluation: Graph) -> tuple[Graph, Graph | None]:
    """One graph with ``Training()`` where the two modes differ only by a True/False constant.

    Returns (body, train_body); train_body is None when one body serves both modes.
    """
    if train == evaluation:
        return evaluation, None
    if len(train.ops) != len(evaluation.ops) or train.inputs != evaluation.inputs:
        return evaluation, train
    merged = []
    for a, b in zip(train.ops, evaluation.ops):
        m = _merge_op(a, b)
        if m is None:
            return evaluation, train
        merged.append(m)
    if train.output != evaluation.output:
        return evaluation, train
    return Graph(evaluation.inputs, tuple(merged), evaluation.output), None


def _merge_arg(a: Arg, b: Arg) -> Arg | None:
    if a == b:
        return a
    if isinstance(a, Const) and isinstance(b, Const) and a.value is True and b.value is False:
        return Training()
    if isinstance(a, Const) and isinstance(b, Const) and type(a.value) is type(b.value) and \
            isinstance(a.value, (int, float)) and not isinstance(a.value, bool):
        return ByMode(a, b)  # dropout_p=0.1 in training, 0.0 in eval
    if isinstance(a, Seq) and isinstance(b, Seq) and len(a.items) == len(b.items) and a.is_list == b.is_list:
        items = [_merge_arg(x, y) for x, y in zip(a.items, b.items)]
        return None if any(i is None for i in items) else Seq(tuple(items), a.is_list)  # type: ignore[arg-type]
    return None


def _merge_op(a: Op, b: Op) -> Op | None:
    if (a.name, a.target, len(a.args), [k for k, _ in a.kwargs]) != (b.name, b.target, len(b.args),
                                                                    [k for k, _ in b.kwargs]):
        return None
    args = [_merge_arg(x, y) for x, y in zip(a.args, b.args)]
    kwargs = [(k, _merge_arg(x, y)) for (k, x), (_, y) in zip(a.kwargs, b.kwargs)]
    if any(x is None for x in args) or any(v is None for _, v in kwargs):
        return None
    return replace(b, args=tuple(args), kwargs=tuple(kwargs))  # type: ignore[arg-type]

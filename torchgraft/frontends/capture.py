"""Capture a live ``nn.Module`` into an ``ir.Model`` (module tree + torch.fx per block)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.frontends.cache_free import leave_out_cache, without_cache
from torchgraft.frontends.child_attrs import with_child_attrs, with_child_methods
from torchgraft.frontends.compiled import compiled_block, is_compiled, no_compilation, uncompiled
from torchgraft.frontends.concrete import concrete_trace, export_flags
from torchgraft.frontends.examples import Example, ExampleDiverged, normalise, tripped_guard, validate
from torchgraft.frontends.extra_state import split_state, with_extra_state
from torchgraft.frontends.fx_block import ModeRead, TraceError, merge_training, trace_graph
from torchgraft.frontends.fx_session import session
from torchgraft.frontends.guards import guards_of, size_sites
from torchgraft.frontends.hooks import refuse_hooks
from torchgraft.frontends.interpret import Interpreter, typed_block
from torchgraft.frontends.leaf import layer_names_kept, recover_ctor, to_primitive, torch_layer_name
from torchgraft.frontends.meta_replay import MetaReplay, replay_device, to_meta
from torchgraft.frontends.method_only import has_no_forward, no_forward_body
from torchgraft.frontends.mode_reads import hidden_mode_reads
from torchgraft.frontends.moe import experts_as_loops
from torchgraft.frontends.recording import (
    eager_types,
    meta_flags,
    none_args,
    optional_arg_paths,
    optional_params,
    record_inputs,
)
from torchgraft.frontends.reparam import is_reparametrized, reparametrized_primitive
from torchgraft.frontends.report import CaptureReport
from torchgraft.frontends.rng import kept_rng
from torchgraft.frontends.signature import honest_root
from torchgraft.frontends.source_copy import copy_forward
from torchgraft.frontends.state import (
    assigned_attributes,
    mutated_arguments,
    restore_state,
    size_driven_python,
    updated_buffers,
    value_driven_python,
)
from torchgraft.frontends.substitutes import substitution_notes
from torchgraft.frontends.trace_reuse import TraceCache, unaliased
from torchgraft.ir.graph import Graph, Input
from torchgraft.ir.model import Helper, Model
from torchgraft.ir.nodes import Block, Chain, ClassRef, Container, Node, Opaque, StateSpec
from torchgraft.ir.stored import stored_structure
from torchgraft.ir.traverse import join, map_tree, walk
from torchgraft.ir.types import ValueType, type_of
from torchgraft.ir.values import const_arg


@dataclass
class _Ctx:
    helpers: dict[str, Helper] = field(default_factory=dict)
    helper_fns: dict[str, Any] = field(default_factory=dict)
    seen: dict[int, str] = field(default_factory=dict)
    ties: list[tuple[str, str]] = field(default_factory=list)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    untraced: dict[str, tuple[nn.Module, tuple[tuple[str, Node], ...], str]] = field(default_factory=dict)
    inputs: dict[str, Example] = field(default_factory=dict)  # the first call each module received
    all_inputs: dict[str, list[Example]] = field(default_factory=dict)  # every call, over all examples
    report: CaptureReport = field(default_factory=CaptureReport)
    reads_training: set[type] = field(default_factory=set)  # classes whose forward reads self.training
    traces: TraceCache = field(default_factory=TraceCache)  # traces shared by instances that trace alike
    source_first: set[str] = field(default_factory=set)  # paths only a copied source keeps faithfully
    forced: set[str] = field(default_factory=set)  # paths whose examples took different paths: source or fail
    buffers: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # non-persistent, before any run


def _class_ref(mod: nn.Module) -> ClassRef:
    cls = type(mod)
    return ClassRef(cls.__module__, cls.__qualname__)


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def own_state(mod: nn.Module) -> tuple[StateSpec, ...]:
    """The parameters and buffers a module holds directly (not through children)."""
    out = [StateSpec(n, tuple(p.shape), _dtype(p), True, True, p.requires_grad)
           for n, p in mod._parameters.items() if p is not None]
    skip = mod._non_persistent_buffers_set
    out += [StateSpec(n, tuple(b.shape), _dtype(b), False, n not in skip, False)
            for n, b in mod._buffers.items() if b is not None]
    return tuple(out)


def _opaque(mod: nn.Module, path: str, reason: str, ctx: _Ctx) -> Opaque:
    ctx.report.add(path, "opaque", reason)
    state = tuple(StateSpec(k, tuple(v.shape), _dtype(v), isinstance(v, nn.Parameter))
                  for k, v in mod.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor))
    kw = recover_ctor(mod)
    ctor = None if kw is None else tuple((k, const_arg(v)) for k, v in kw.items())
    return Opaque(_class_ref(mod), reason, state, ctor)


_RUNS_ON = ("forward", "__iter__", "__call__", "_call_impl")
"""What ``nn.Sequential``'s forward runs through (``for module in self``): a subclass that overrides any of
them (an ``__iter__`` that reverses the order) computes something else and is captured as its own class."""


def _is_plain(mod: nn.Module, base: type) -> bool:
    return isinstance(mod, base) and all(getattr(type(mod), a, None) is getattr(base, a, None) for a in _RUNS_ON)


def build_node(mod: nn.Module, path: str, ctx: _Ctx) -> Node:
    """The IR node for ``mod`` at ``path`` (children first)."""
    if id(mod) in ctx.seen:
        ctx.ties.append((path, ctx.seen[id(mod)]))
    else:
        ctx.seen[id(mod)] = path
    if is_reparametrized(mod):  # weight_norm & co.: the layer's primitive, its reparametrizations recorded
        ctx.report.add(path, "leaf")
        return reparametrized_primitive(mod, path)
    kids = tuple((n, build_node(c, join(path, n), ctx)) for n, c in mod._modules.items() if c is not None)
    if torch_layer_name(mod) is not None:
        prim, why = to_primitive(mod)
        if prim is not None:
            if mod._modules:  # what was recorded below it (a layer without children: nothing)
                ctx.report.drop_below(path)
            ctx.report.add(path, "leaf", why)  # why: a note when a subclass stands as its torch.nn layer
            return prim
        return _opaque(mod, path, why, ctx)
    if _is_plain(mod, nn.Sequential) and not own_state(mod):
        ctx.report.add(path, "container")
        cls = None if type(mod) is nn.Sequential else _class_ref(mod)  # a subclass: the emitter writes its class
        return Chain(*(c for _, c in kids), names=tuple(n for n, _ in kids), cls=cls)
    if type(mod) is nn.Module and not own_state(mod):  # a bare holder (fx GraphModule levels): its keys stay
        ctx.report.add(path, "container")
        return Container("ModuleDict", kids)
    for base in (nn.ModuleList, nn.ModuleDict):
        if isinstance(mod, base) and type(mod).forward is nn.Module.forward and type(mod) is base:
            ctx.report.add(path, "container")
            return Container(base.__name__, kids)
    if is_compiled(mod):  # a torch.compile'd submodule: a Block calling what it wraps, keys kept
        ctx.report.add(path, "container", "torch.compile wrapper: its forward calls _orig_mod")
        return compiled_block(mod, path, kids)
    if has_no_forward(mod):  # its parent calls its other methods, which fx inlines there
        stub, why = no_forward_body(mod, ctx.helpers)
        return _fallback_block(mod, path, kids, stub, None, "source", why, ctx)
    nones, given = none_args(mod, ctx.all_inputs.get(path, []))
    if set(optional_params(mod)) - set(nones) - set(given) and len(ctx.all_inputs.get(path, [])) > 1:
        ctx.forced.add(path)  # None in one example, given in another: no single trace serves both
        ctx.source_first.add(path)
    preferred = _copied_if_value_driven(mod, path, kids, ctx)
    if preferred is not None:
        return preferred
    try:
        _refuse_tracing(mod, path, ctx)
        body, train_body, consts = _trace_modes(mod, ctx, nones, given, path)
    except TraceError as e:
        if isinstance(e, SourceFirst):
            ctx.source_first.add(path)
        ctx.untraced[path] = (mod, kids, str(e))
        return _opaque(mod, path, str(e), ctx)
    ctx.report.add(path, "fx")
    state = own_state(mod)
    for name, value in {**_start_buffers(mod, ctx), **consts}.items():
        ctx.constants[join(path, name)] = value
    state += tuple(StateSpec(n, tuple(v.shape), _dtype(v), False, False, False) for n, v in consts.items())
    return Block(_class_ref(mod), kids, body, state, train_body, method="fx")


def _refuse_tracing(mod: nn.Module, path: str, ctx: _Ctx) -> None:
    """Raise when no trace of ``mod.forward`` can be faithful (``SourceFirst``: copy its source) or
    when torch.fx must not trace it (``TraceError``: the fallback trace runs it instead)."""
    if path in ctx.forced:
        raise SourceFirst("the examples take different paths through its forward")
    assigned = assigned_attributes(mod)
    if assigned:
        raise SourceFirst(f"its forward assigns self.{', self.'.join(assigned)}: state kept in Python "
                          "attributes, which a trace would bake in")
    mutated = mutated_arguments(mod, ctx.all_inputs.get(path, []))
    if mutated:
        raise SourceFirst(f"its forward changes the arguments {', '.join(mutated)} in place (list "
                          "methods), which a trace would not keep")
    driven = size_driven_python(mod)
    if driven:
        raise SourceFirst(f"sizes drive its Python ({', '.join(driven)}), which a trace would unroll "
                          "for the example's sizes")
    mode = hidden_mode_reads(mod)
    if mode:
        raise SourceFirst(f"{'; '.join(mode)}: a trace would keep one mode's path for both")
    updated = updated_buffers(mod)
    if updated:
        raise TraceError(f"its forward updates self.{', self.'.join(updated)} in place, which torch.fx "
                         "would run on the real tensors and leave out")


def _copied_if_value_driven(mod: nn.Module, path: str, kids: tuple[tuple[str, Node], ...], ctx: _Ctx
                            ) -> Block | None:
    """A source Block for a forward that branches on what no guard sees (``torch.is_grad_enabled()``,
    ``x.requires_grad``, ``x.is_contiguous()``), when its source can be copied; else None (traced)."""
    reads = value_driven_python(mod)
    if not reads:
        return None
    try:
        body = copy_forward(mod, ctx.helpers)
    except TraceError:
        return None
    why = f"its forward reads {', '.join(reads)}; its source was copied to keep every branch"
    return _fallback_block(mod, path, kids, body, None, "source", why, ctx)


def _fallback_block(mod: nn.Module, path: str, kids: tuple[tuple[str, Node], ...], body: Node,
                    train_body: Node | None, method: str, why: str, ctx: _Ctx) -> Block:
    """The Block of a module captured other than by fx (``trace``/``source``), reported, its
    non-persistent buffers kept as constants."""
    ctx.report.add(path, method, why)
    ctx.constants.update({join(path, n): v for n, v in _start_buffers(mod, ctx).items()})
    return Block(_class_ref(mod), with_child_attrs(mod, body, kids, ctx.helpers), body, own_state(mod), train_body,
                 method=method)


class SourceFirst(TraceError):
    """A forward only its copied source can keep faithfully (it updates Python attributes)."""


def _trace_modes(mod: nn.Module, ctx: _Ctx, nones: tuple[str, ...], given: tuple[str, ...], path: str
                 ) -> tuple[Graph, Graph | None, dict[str, torch.Tensor]]:
    """(body, train_body, constants): one trace when the forward never reads ``self.training``,
    else one per mode, merged where they differ only by the flag; shared with an earlier instance
    that provably traces alike (``frontends.trace_reuse``)."""
    reused, token = ctx.traces.lookup(mod, nones, given)
    if reused is not None:
        return reused
    kept: list[tuple[Any, dict[str, str]]] = []
    traced = _trace_fresh(mod, ctx, nones, given, path, kept)
    ctx.traces.store(token, traced, kept[0][0] if len(kept) == 1 else None)
    return traced


def _trace_fresh(mod: nn.Module, ctx: _Ctx, nones: tuple[str, ...], given: tuple[str, ...], path: str,
                 kept: list[tuple[Any, dict[str, str]]] | None = None
                 ) -> tuple[Graph, Graph | None, dict[str, torch.Tensor]]:
    """``_trace_modes`` without sharing: fx traces of ``mod`` itself (``kept``: the fx graph and hints of
    the one trace serving both modes)."""
    if type(mod) not in ctx.reads_training:
        try:
            body, consts = trace_graph(mod, None, ctx.helpers, ctx.helper_fns, nones, given, path, kept)
            return body, None, consts
        except ModeRead:
            ctx.reads_training.add(type(mod))
    train, consts = trace_graph(mod, True, ctx.helpers, ctx.helper_fns, nones, given, path)
    evaluation, consts2 = trace_graph(mod, False, ctx.helpers, ctx.helper_fns, nones, given, path)
    body, train_body = merge_training(train, evaluation)
    return body, train_body, {**consts, **consts2}


def _trace_fallbacks(model: nn.Module, root: Node, args: tuple[Any, ...], kwargs: dict[str, Any],
                     ctx: _Ctx) -> Node:
    """Capture the modules fx could not trace by running them (``frontends.concrete``)."""
    done: dict[str, Node] = {}
    failed: dict[str, str] = {}
    for path, (mod, kids, fx_reason) in ctx.untraced.items():
        method, body, train_body, why = _fallback(model, mod, path, fx_reason, ctx)
        if body is None:
            ctx.report.add(path, "opaque", why)
            failed[path] = why
            continue
        done[path] = _fallback_block(mod, path, kids, body, train_body, method, why, ctx)

    def swap(path: str, node: Node) -> Node:
        if isinstance(node, Opaque) and path in done:  # its children may have been replaced too
            swapped = map_tree(done[path], lambda p, n: swap(p, n) if p != path else n, path)
            return with_child_methods(ctx.untraced[path][0], swapped, ctx.helpers)
        if isinstance(node, Opaque) and path in failed:
            return replace(node, reason=failed[path])
        return node

    return map_tree(root, swap)


def _fallback(model: nn.Module, mod: nn.Module, path: str, fx_reason: str, ctx: _Ctx
              ) -> tuple[str, Node | None, Node | None, str]:
    """(method, body, train_body, note): the concrete trace, else the copied source, else nothing.

    The copied source comes first for a forward that keeps state in Python attributes, and replaces
    a trace that branched on sizes in the module's own code (so every branch is kept, not guarded)."""
    reason = f"{fx_reason}; it never ran on the example inputs, so it was not traced"
    seen = ctx.inputs.get(path)
    if seen is not None and path not in ctx.source_first:
        try:
            with restore_state(model):
                others = ctx.all_inputs.get(path, [])[1:]
                train = concrete_trace(mod, True, *seen, where=path, others=others)
                evaluation = concrete_trace(mod, False, *seen, where=path, others=others)
            body, train_body = merge_training(train, evaluation)
            own = _own_branches(mod, body, train_body)
            if not own:
                return "trace", body, train_body, ""
            with contextlib.suppress(TraceError):
                note = f"its forward branches on sizes ({', '.join(own)}); its source was copied to keep every branch"
                return "source", copy_forward(mod, ctx.helpers), None, note
            return "trace", body, train_body, ""
        except TraceError as e:
            reason = f"{fx_reason}; the fallback trace failed too: {e}"
    elif path in ctx.source_first:
        reason = fx_reason
    try:
        return "source", copy_forward(mod, ctx.helpers), None, f"{reason}; its forward source was copied"
    except TraceError as e:
        if path in ctx.forced:
            raise CaptureError(f"{path or '<root>'} ({type(mod).__name__}): the examples take different paths "
                               f"through its forward, and its source cannot be copied to keep both ({e}). "
                               "Capture each kind of call separately, or give the most general call first.",
                               path) from e
        return "opaque", None, None, f"{reason}; copying its source failed: {e}"


def _own_branches(mod: nn.Module, *bodies: Graph | None) -> list[str]:
    """Sites of size guards that lie in ``mod``'s own forward (not in a library function it calls)."""
    try:
        own_file = inspect.getsourcefile(type(mod).forward) or "?"
    except TypeError:
        return []
    sites = [s for b in bodies if b is not None for s in size_sites(b.ops)]
    return [s for s in dict.fromkeys(sites) if s.rpartition(":")[0] == own_file]


def _copies(constants: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Constants for a replay of the IR: copies, so a forward that writes a buffer in place
    (``self.inv_freq.mul_(0.5)``) leaves the values the emitted model starts from as they were."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in constants.items()}


def _start_buffers(mod: nn.Module, ctx: _Ctx) -> dict[str, torch.Tensor]:
    """``mod``'s non-persistent buffers as they were when capture began: a forward that writes one in place
    (``self.inv_freq.mul_(0.5)``) has run for real by the time a child is traced (its parent's trace, the
    recorded inputs), and the emitted model must start from the user's values."""
    found = ctx.buffers.get(id(mod))
    return found if found is not None else _nonpersistent(mod)


def _nonpersistent(mod: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in mod._buffers.items()
            if b is not None and n in mod._non_persistent_buffers_set}


def capture(model: nn.Module, args: tuple[Any, ...] | Any = (), kwargs: dict[str, Any] | None = None, *,
            examples: Sequence[tuple[Any, dict[str, Any] | None]] | None = None) -> Model:
    """Capture ``model`` into a typed, hierarchical ``ir.Model``.

    ``args``/``kwargs`` are an example call; ``examples`` adds more ``(args, kwargs)`` pairs (or gives
    them all). Whatever the trace decides from the first call's values (an argument that was None,
    a branch on a size) becomes a guard: a run-time ``ValueError`` in the emitted forward, listed in
    ``model.report.guards``. Every further example is replayed through the captured IR; where one
    trips a guard of some module, that module's forward source is copied instead (both paths kept)
    and capture starts again; where it cannot be copied, or outputs differ, capture raises
    ``CaptureError`` naming the example.
    The model is not changed (buffers and plain attributes a run updates are put back).
    A transformers model whose config says ``use_cache=True``, called without asking for a cache,
    is captured as if called with ``use_cache=False``: the cache object is left out of its outputs,
    ``model.report.notes`` says so and the emitted forward refuses ``use_cache=True``
    (``frontends.cache_free``).

    >>> m = capture(torchvision.models.resnet18(), (torch.randn(2, 3, 224, 224),))  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"capture() needs an nn.Module, got {type(model).__name__}")
    with layer_names_kept():  # which torch.nn layer a class is: worked out once per class in this capture
        return _capture_examples(model, args, kwargs, examples)


def _capture_examples(model: nn.Module, args: tuple[Any, ...] | Any, kwargs: dict[str, Any] | None,
                      examples: Sequence[tuple[Any, dict[str, Any] | None]] | None) -> Model:
    """``capture``, once its model is known to be an ``nn.Module``."""
    model, compiled_note = uncompiled(model)  # torch.compile(model): what it wraps, never compiled
    refuse_hooks(model)  # forward hooks would be dropped silently: refuse them loudly
    calls = normalise(args, kwargs, examples)
    forced: set[str] = set()
    # without_cache: a decoder's default cache object is left out, and reported
    with without_cache(model, calls) as cache_off, experts_as_loops(model):
        while True:
            try:
                with kept_rng(), no_compilation(model):  # no RNG drawn (CPU nor CUDA), nothing compiled
                    captured = _capture(model, calls, forced)
                break
            except ExampleDiverged as e:
                if e.path in forced or len(forced) >= MAX_FORCED:
                    raise CaptureError(str(e), e.path) from e
                forced.add(e.path)
    if compiled_note:
        captured.report.notes.append(compiled_note)
    return leave_out_cache(captured, model) if cache_off else captured


MAX_FORCED = 32
"""Modules capture copies as source, at most, to keep every example's path before it gives up."""


def _capture(model: nn.Module, calls: list[Example], forced: set[str]) -> Model:
    """One capture; the modules in ``forced`` are copied as source (their paths differ between examples)."""
    args, kwargs = calls[0]
    first = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), None)
    symbols = {int(first.shape[0]): "N"} if first is not None and first.dim() > 0 else {}
    ctx = _Ctx(source_first=set(forced), forced=set(forced))
    state, extra_state = split_state(model.state_dict())  # tensors; JSON extra states (else refused, now)
    ctx.buffers = {id(m): _nonpersistent(m) for m in model.modules() if m._non_persistent_buffers_set}
    optional = optional_arg_paths(model)  # one eager run only when some module needs its inputs
    if optional:
        record_inputs(model, optional, calls, ctx.inputs, ctx.all_inputs)
    ctx.traces.unique = unaliased(model)  # after the eager run: the tree as it is traced
    with session():  # nn.Module patched once for every block's fx trace
        root = build_node(model, "", ctx)
    if ctx.untraced:
        missing = [p for p in ctx.untraced if p not in ctx.inputs]
        if missing:
            record_inputs(model, missing, calls, ctx.inputs, ctx.all_inputs)
        root = _trace_fallbacks(model, root, args, kwargs, ctx)
    out_type, mod_types, op_types = _types(root, model, args, kwargs, ctx, symbols)
    root = map_tree(root, lambda p, n: typed_block(n, op_types, p) if isinstance(n, Block) else n)
    if len(calls) > 1:
        validate(model, calls, lambda a, kw: Interpreter(ctx.helper_fns, symbols, _copies(ctx.constants)).run_node(
            root, model, "", a, kw), lambda: restore_state(model))
    root = honest_root(root) if isinstance(root, Block) else root
    inputs = root.body.inputs if isinstance(root, Block) and isinstance(root.body, Graph) else ()
    if isinstance(root, Chain) and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        inputs = (Input("input", type_of(args[0], symbols)),)  # nn.Sequential.forward(self, input)
    ctx.report.guards = guards_of(root)
    root = stored_structure(root, ctx.helpers)  # a forward that is only structure is stored as that structure
    root = with_extra_state(root, model, ctx.helpers)  # get_extra_state/set_extra_state copied
    params = list(model.named_parameters(remove_duplicate=False))
    ties = list(ctx.ties) + _param_ties(model, ctx.ties, params)
    ctx.report.account({**state, **extra_state}, ties)
    ctx.report.notes += substitution_notes(ctx.helpers)  # nms, roi_align: plain-torch stand-ins
    return Model(type(model).__name__ if type(model).__name__.isidentifier() else "Model", root, inputs,
                 out_type, tuple(sorted(mod_types.items())), tuple(ties),
                 tuple(ctx.helpers[k] for k in sorted(ctx.helpers)),
                 frozen=tuple(n for n, p in params if not p.requires_grad),
                 weights={k: v.detach() for k, v in state.items()}, report=ctx.report,
                 constants=dict(ctx.constants), extra_state=extra_state)


Types = tuple[ValueType, dict[str, ValueType], dict[str, dict[str, ValueType]]]


def _types(root: Node, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: _Ctx,
           symbols: dict[int, str]) -> Types:
    """Output, module and op types: from a meta replay of the IR where it gives the real types
    (no arithmetic, no weight copies), else from a replay against the original modules."""
    device = replay_device(model, args, kwargs)
    if device is not None and device != "meta":
        meta = MetaReplay(ctx.helper_fns, symbols, ctx.constants, device)
        copied = [model.get_submodule(p) for p, n in walk(root)  # these run their own Python for real
                  if (isinstance(n, Block) and n.method == "source") or isinstance(n, Opaque)]
        try:
            with torch.no_grad(), export_flags(), restore_state(model, copied):
                out = meta.run_node(root, model, "", *to_meta((args, kwargs)))
        except Exception:  # noqa: BLE001 - it needs real values: replay for real below
            pass
        else:
            ctx.report.typing = "meta"
            return type_of(out, symbols, device), meta.module_types, meta.types
    with torch.no_grad(), restore_state(model), meta_flags(args, kwargs):
        try:
            interp = Interpreter(ctx.helper_fns, symbols, _copies(ctx.constants))
            out = interp.run_node(root, model, "", args, kwargs)
        except CaptureError as e:
            with restore_state(model):
                eager_types(model, args, kwargs, symbols)  # the model's own failure gets the clearer error
            path, cause = tripped_guard(e)
            if path is not None:  # a module called twice, differently: its first call's guard refused the second
                raise ExampleDiverged(f"{path or '<root>'} is called in ways one trace cannot serve: {cause}",
                                      path) from e
            raise CaptureError(f"torchgraft could not replay the captured forward ({e}); the model itself "
                               "runs on these inputs, so this is a torchgraft bug: please report it", e.path) from e
    ctx.report.typing = "meta" if device == "meta" else "eager"
    return type_of(out, symbols), interp.module_types, interp.types


def _param_ties(model: nn.Module, module_ties: list[tuple[str, str]],
                params: list[tuple[str, nn.Parameter]] | None = None) -> list[tuple[str, str]]:
    """Parameters and buffers (persistent or not) reachable under two names that no shared module explains
    (tied weights; one buffer registered in several modules, whose in-place updates all of them see).
    ``params``: ``model.named_parameters(remove_duplicate=False)``, when the caller has it."""
    first: dict[int, str] = {}
    ties = []
    buffers = list(model.named_buffers(remove_duplicate=False))  # non-persistent ones too: one tensor, one update
    if params is None:
        params = list(model.named_parameters(remove_duplicate=False))
    for name, p in [*params, *buffers]:
        if id(p) in first and not any(name.startswith(a + ".") and first[id(p)] == t + name[len(a):]
                                      for a, t in module_ties):
            ties.append((name, first[id(p)]))
        first.setdefault(id(p), name)
    return ties

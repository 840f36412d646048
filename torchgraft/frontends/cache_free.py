"""transformers decoders at their default settings: capture them without a key/value cache.

A decoder's config usually says ``use_cache=True``. Called with no ``use_cache`` and no cache,
such a model builds a fresh cache object (``DynamicCache``, ``EncoderDecoderCache``), fills it
with this call's keys and values and returns it beside the outputs. No trace can write that
Python object back as code, and no other output depends on it. So when no example asks for a
cache, capture runs the model as if it had been called with ``use_cache=False``: while capture
runs, the ``use_cache`` of every config the model's modules hold reads False, and afterwards it
is put back (the user's model and configs end as they were). The emitted model computes the
same outputs and leaves the cache out (its dict has no ``past_key_values``/``cache`` key).

The capture report says so (``report.notes``), and the emitted forward refuses a call that
asks for a cache (``use_cache=True``, or a cache passed in) with a ``ValueError``: incremental
decoding is not supported. Capturing with ``use_cache=False`` makes the choice explicit.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from torchgraft.frontends.examples import Example
from torchgraft.frontends.guards import guards_of, where_text
from torchgraft.frontends.rng import kept_rng
from torchgraft.frontends.state import restore_state
from torchgraft.ir.graph import FunctionCall, Graph, Guard, Input, InputKind, Op
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block
from torchgraft.ir.values import Const, Ref

CACHE_ARGS = ("past_key_values", "cache", "cache_params", "past_key_value")
"""Forward parameters through which transformers models take a key/value (or state) cache."""

CACHE_HINT = ("it is a key/value cache, which torchgraft does not capture (incremental decoding is not "
              "supported): capture with use_cache=False and no cache passed in")
"""Why a trace that met a cache object failed, and what to do."""


def asks_for_cache(calls: list[Example]) -> bool:
    """True when some example passes ``use_cache`` (any value but None) or a cache."""
    for args, kwargs in calls:
        if kwargs.get("use_cache") is not None or any(kwargs.get(n) is not None for n in CACHE_ARGS):
            return True
        if any(is_cache(a) for a in args):
            return True
    return False


def is_cache(value: Any) -> bool:
    """A transformers cache object (``DynamicCache``, ``EncoderDecoderCache``, ``MambaCache``, ...)."""
    return any(c.__name__.endswith("Cache") and c.__module__.startswith("transformers")
               for c in type(value).__mro__)


def _cache_configs(model: nn.Module) -> list[Any]:
    """The distinct config objects the model's modules hold whose ``use_cache`` is true."""
    found: dict[int, Any] = {}
    for mod in model.modules():
        config = mod.__dict__.get("config")
        if config is not None and getattr(config, "use_cache", None) is True:
            found.setdefault(id(config), config)
    return list(found.values())


def _holds_cache(out: Any, depth: int = 0) -> bool:
    """True when ``out`` (a ModelOutput, dict, tuple) holds a cache object, at most two levels down."""
    if is_cache(out):
        return True
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return depth < 2 and any(_holds_cache(x, depth + 1) for x in items)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode while the block runs; each one's own flag put back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def returns_cache(model: nn.Module, call: Example) -> bool:
    """True when ``model`` returns a cache object for ``call``, in its mode or (capture traces both
    modes) in eval mode: one or two eager runs, the model left as it was. False when it does not,
    or fails (capture then reports the failure itself)."""
    from torchgraft.frontends.concrete import export_flags  # concrete imports this module

    args, kwargs = call
    modes: list[contextlib.AbstractContextManager[None]] = [contextlib.nullcontext()]
    if any(m.training for m in model.modules()):
        modes.append(_evaluating(model))
    try:
        for mode in modes:
            with mode, torch.no_grad(), kept_rng(), restore_state(model), export_flags():
                if _holds_cache(model(*args, **kwargs)):
                    return True
    except Exception:  # noqa: BLE001 - the capture's own runs report it, with the module path
        return False
    return False


@contextlib.contextmanager
def without_cache(model: nn.Module, calls: list[Example]) -> Iterator[bool]:
    """While the block runs, the configs of ``model`` read ``use_cache=False`` when no example asks
    for a cache and the first one returns one; yields whether they did (the capture then leaves the
    cache out). An encoder whose config says ``use_cache=True`` but returns no cache is left alone."""
    configs = [] if asks_for_cache(calls) else _cache_configs(model)
    if configs and not returns_cache(model, calls[0]):
        configs = []
    for config in configs:
        config.use_cache = False
    try:
        yield bool(configs)
    finally:
        for config in configs:
            config.use_cache = True


def _fresh(taken: set[str], base: str) -> str:
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _asks(name: str, taken: set[str]) -> Op:
    """``bool(use_cache)`` / ``<name> is not None``: the call asks for a cache through parameter ``name``."""
    if name == "use_cache":  # transformers asks `if use_cache:`: any truthy value (1, True) builds a cache
        return Op(_fresh(taken, "asks_cache"), FunctionCall("builtins.bool"), (Ref(name),))
    return Op(_fresh(taken, f"{name}_given"), FunctionCall("operator.is_not"), (Ref(name), Const(None)))


def _refusal(names: list[str], where: str, taken: set[str]) -> list[Op]:
    """One check and guard refusing a call that asks for a cache through any of ``names``:
    ``if bool(use_cache) | (past_key_values is not None): raise ValueError(...)``."""
    first = _asks(names[0], taken)
    ops, last = [first], first
    for name in names[1:]:  # each value read by the next op: written as one expression
        ops += [_asks(name, taken)]
        last = Op(_fresh(taken, "asks"), FunctionCall("operator.or_"), (Ref(last.name), Ref(ops[-1].name)))
        ops.append(last)
    ok = Op(_fresh(taken, "cache_free"), FunctionCall("operator.not_"), (Ref(last.name),))
    passed = [n for n in names if n != "use_cache"]
    ignored = " and ignores a cache passed in" if passed else ""
    asked = ", ".join(["use_cache=True" if n == "use_cache" else n for n in names])
    msg = (f"{where} was captured without a key/value cache (as with use_cache=False): it returns no "
           f"past_key_values{ignored}, so incremental decoding is not supported; call it without {asked}")
    return [*ops, ok, Op(_fresh(taken, "cache_refused"), Guard(msg), (Ref(ok.name),))]


def _refusing(graph: Graph, names: list[str], where: str) -> Graph:
    """``graph`` with keyword parameters ``names`` (default None) that refuse a cache when given."""
    new = [n for n in names if n not in {i.name for i in graph.inputs} | {op.name for op in graph.ops}]
    if not new:
        return graph
    inputs = list(graph.inputs)
    at = next((k for k, i in enumerate(inputs) if i.kind is InputKind.VAR_KEYWORD), len(inputs))
    inputs[at:at] = [Input(n, kind=InputKind.KEYWORD, default=Const(None)) for n in new]
    taken = {i.name for i in inputs} | {op.name for op in graph.ops}
    return Graph(tuple(inputs), (*_refusal(new, where, taken), *graph.ops), graph.output)


def note(name: str) -> str:
    """The report line of a model captured without its cache."""
    return (f"{name} was captured without a key/value cache: its config says use_cache=True, and no example "
            "asked for one, so it was traced as if called with use_cache=False. The emitted model returns "
            "the same outputs without past_key_values (or cache) and refuses use_cache=True or a cache "
            "passed in: incremental decoding is not supported. Capture with use_cache=False to make this "
            "explicit.")


def leave_out_cache(captured: Model, model: nn.Module) -> Model:
    """``captured`` (traced with the cache off) whose root refuses calls that ask for a cache, with
    the report note and the guards it adds."""
    root = captured.root
    captured.report.notes.append(note(type(model).__name__))
    if not (isinstance(root, Block) and isinstance(root.body, Graph)):
        return captured
    params = inspect.signature(type(model).forward).parameters
    names = [n for n in ("use_cache", *CACHE_ARGS) if n in params]
    if any(n in params for n in CACHE_ARGS):  # transformers 5 still takes the deprecated past_key_values
        names += [] if "past_key_values" in names else ["past_key_values"]
    where = where_text("", type(model).__name__)
    train = root.train_body
    root = replace(root, body=_refusing(root.body, names, where),
                   train_body=_refusing(train, names, where) if isinstance(train, Graph) else train)
    assert isinstance(root.body, Graph)
    captured.report.guards = guards_of(root)
    return captured.with_root(root, inputs=root.body.inputs)


__all__ = ["CACHE_ARGS", "CACHE_HINT", "asks_for_cache", "is_cache", "leave_out_cache", "note", "returns_cache",
           "without_cache"]

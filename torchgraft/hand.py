"""Hand-built IR → a typed ``ir.Model`` (the Flux/Axon way of writing models as data).

    >>> net = Chain(Conv2d(3, 16, 3, padding=1), BatchNorm2d(16), ReLU())   # doctest: +SKIP
    >>> model = build_model(net, TensorType(("N", 3, 32, 32)))               # doctest: +SKIP
    >>> str(model.output_type)                                               # doctest: +SKIP
    'f32[N, 16, 32, 32]'

Types are inferred by building the emitted module on the meta device (no memory) and running
it at several trial sizes for the symbolic dims (``frontends.hand_dims``): every module path's
output type is recorded, with dims derived from symbols written as expressions (``N*4``).
A model that does not run fails with an IRError naming the innermost module that raised,
its input types written symbolically, and the error torch gave.
"""

from __future__ import annotations

import torch

from torchgraft.backends.torch.emitter import emit
from torchgraft.errors import IRError
from torchgraft.frontends.hand_dims import TrialPlan, where
from torchgraft.frontends.hand_run import (
    Failure,
    Recording,
    cpu_error,
    example,
    record,
    show_inputs,
    symbol_map,
    symbolic_message,
)
from torchgraft.ir.graph import Input
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Node
from torchgraft.ir.types import TensorType, ValueType, is_dim_expr, type_of


def _plan(inputs: tuple[TensorType, ...]) -> TrialPlan:
    for t in inputs:
        if not isinstance(t, TensorType):
            raise IRError(f"hand-built model inputs must be TensorTypes, got {t!r}")
        bad = [d for d in t.shape if isinstance(d, str) and is_dim_expr(d) and not d.isidentifier()]
        if bad:
            raise IRError(f"input type {t} has derived dims {bad}; give inputs plain symbols ('N') or sizes")
    symbols = tuple(dict.fromkeys(d for t in inputs for d in t.shape if isinstance(d, str)))
    return TrialPlan.for_symbols(symbols, {d for t in inputs for d in t.shape if isinstance(d, int)})


def _failed(plan: TrialPlan, runs: list[Recording], device: str) -> IRError:
    """The error for a model that fails in some run: where, on what input types, and what to fix."""
    first = next(i for i, r in enumerate(runs) if r.failure is not None)
    f = runs[first].failure
    assert f is not None
    fails = [r.failure for r in runs if r.failure is not None]
    if first == 0 and len(fails) == len(runs) and all(g.path == f.path for g in fails):
        inputs = _symbolic_inputs(plan, fails, device)
        numbers = symbol_map(f.inputs, inputs, plan.runs[0])
        error = cpu_error(f) or f.error
        message = symbolic_message(f"{type(error).__name__}: {error}", numbers)
        return IRError(f"the hand-built model fails at {where(f.path)} ({f.cls}) on input {show_inputs(inputs)}: "
                       f"{message} [trial sizes {plan.sizes(0)}]; fix the arguments of that node, or of the node "
                       "feeding it, so the two agree")
    return IRError(f"the hand-built model runs at {plan.sizes(0)} but fails at {where(f.path)} ({f.cls}) at "
                   f"{plan.sizes(first)} on input {show_inputs(f.inputs)}: {type(f.error).__name__}: {f.error}; "
                   "that dim cannot vary: fix it to a size in the input types")


def _symbolic_inputs(plan: TrialPlan, fails: list[Failure], device: str) -> ValueType:
    try:
        return plan.merge([g.inputs for g in fails], fails[0].path, device)
    except IRError:
        return fails[0].inputs


def infer_types(root: Node, inputs: tuple[TensorType, ...], name: str = "Model") -> Model:
    """A typed Model for a hand-built IR tree, given input types (symbols such as ``"N"``, ``"T"`` allowed).

    >>> infer_types(Chain(LinearLayer(8, 4)), (TensorType(("N", 8)),)).output_type  # doctest: +SKIP
    TensorType(shape=('N', 4), dtype='float32', device='cpu')
    """
    plan = _plan(tuple(inputs))
    device = inputs[0].device if inputs else "cpu"
    bare = Model(name, root, tuple(Input(f"x{i}" if i else "x", t) for i, t in enumerate(inputs)))
    module = emit(bare, formatted=False).materialize(load_weights=False, device="meta")
    runs = [record(module, tuple(example(t, sizes) for t in inputs), device) for sizes in plan.runs]
    failures = [r.failure.error for r in runs if r.failure is not None]
    if failures:
        raise _failed(plan, runs, device) from failures[0]
    types = {p: plan.merge([r.outputs[p] for r in runs], p, device)
             for p in runs[0].outputs if all(p in r.outputs for r in runs)}
    return Model(name, root, bare.inputs, types.get("", type_of(None)), tuple(sorted(types.items())))


def build_model(root: Node, *inputs: TensorType, seed: int = 0, name: str = "Model") -> Model:
    """A typed Model with freshly initialised weights, ready to emit, save and load.

    The weights come from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``: the same
    seed gives the same weights, and the caller's global RNG state is left as it was.

    >>> model = build_model(Chain(LinearLayer(8, 4)), TensorType(("N", 8)), seed=1)  # doctest: +SKIP
    >>> sorted(model.weights)                                                        # doctest: +SKIP
    ['0.bias', '0.weight']
    """
    typed = infer_types(root, tuple(inputs), name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = emit(typed, formatted=False).materialize(load_weights=False)
    state = {k: v.detach() for k, v in module.state_dict().items()}
    return Model(typed.name, typed.root, typed.inputs, typed.output_type, typed.types, weights=state)


build = build_model
"""``torchgraft.build(net, *input_types, seed=0, name="Model")``: the same function as ``build_model``."""

"""Why a model does not run on its input types: the innermost failing node, its inputs written symbolically,
and torch's error, from replays of the IR at the trial sizes (``FailureReplay``, an ``IRReplay``, keeps it).

Used when typing a model fails (``hand.infer_types``): the IR is replayed on meta at every set of trial sizes,
each replay's innermost failure is kept, and the message says where, on what, and what to fix. Meta kernels
check less and say it worse (``Invalid channel dimensions``) than the CPU ones (``expected input[11, 8, 30, 30]
to have 4 channels``), so the failing layer or op is rerun on CPU zeros of the same shapes when small; the
trial numbers in torch's message are then written as the symbols they stand for (``input[N, 8, 30, 30]``).

>>> explain_failure(bare_model, "the hand-built model")   # doctest: +SKIP
IRError("the hand-built model fails at '1' (Conv2d) on input f32[N, 8, 30, 30]: RuntimeError: ...")
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from torchgraft.errors import CaptureError, IRError
from torchgraft.frontends.hand_dims import TrialPlan, where
from torchgraft.ir.combine import Combine
from torchgraft.ir.functions import helper_name, resolve
from torchgraft.ir.graph import ChildCall, FunctionCall, MethodCall, Op, PrimCall
from torchgraft.ir.interpret import call_prim
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Node
from torchgraft.ir.types import Dim, ScalarType, TensorType, ValueType, type_of
from torchgraft.retype_build import IRBlock, build_from_ir
from torchgraft.retype_dims import example_inputs, trial_plan
from torchgraft.retype_replay import IRReplay

MAX_RERUN = 1 << 24
"""The most elements (state and arguments) a failing layer or op may hold to be rerun on the CPU."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Where a replay failed: the innermost path, what ran there (a layer's class, ``op 'y'``), the types and
    values it was given, the error, and how to run it again (``module`` or ``call``) on other tensors.

    >>> Failure("1", "Conv2d", TensorType((11, 8, 30, 30)), RuntimeError("Invalid channel dims"))  # doctest: +SKIP
    """

    path: str
    what: str
    inputs: ValueType
    error: Exception
    module: nn.Module | None = None
    call: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _cause(e: Exception) -> Exception:
    """The error torch gave, under the CaptureErrors the interpreter wrapped it in."""
    while isinstance(e, CaptureError) and isinstance(e.__cause__, Exception):
        e = e.__cause__
    return e


def _op_call(op: Op) -> Callable[..., Any] | None:
    """The plain callable of a graph op (to rerun it on the CPU), None for a child call, a read, a helper."""
    t = op.target
    if isinstance(t, FunctionCall):
        if helper_name(t.qualname) is not None:
            return None
        try:
            return resolve(t.qualname)
        except IRError:
            return None
    if isinstance(t, MethodCall):
        return lambda x, *a, **kw: getattr(x, t.name)(*a, **kw)
    if isinstance(t, PrimCall):
        return lambda *a, **kw: call_prim(op, list(a), kw)
    return None


class FailureReplay(IRReplay):
    """An ``IRReplay`` that keeps, in ``failure``, the innermost module, graph op or join that raised.

    >>> replay = FailureReplay({}, {}, device="cpu")   # doctest: +SKIP
    """

    def __init__(self, helpers: dict[str, Callable[..., Any]], symbols: dict[int, str], device: str = "cpu") -> None:
        super().__init__(helpers, symbols, device=device)
        self.failure: Failure | None = None

    def _failed(self, failure: Failure) -> None:
        """Keep ``failure`` unless an inner one is kept already (an error reaches the innermost first)."""
        if self.failure is None:
            self.failure = failure

    def run_node(self, node: Node, mod: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """As ``IRReplay.run_node``; a failure is kept as this node's (its class, its arguments)."""
        try:
            return super().run_node(node, mod, path, args, kwargs)
        except Exception as e:
            built = isinstance(mod, IRBlock)
            what = node.cls.name if isinstance(node, Block) else type(node if built else mod).__name__
            self._failed(Failure(path, what, type_of(args, None, self.meta_is), _cause(e), None if built else mod,
                                 None, args, kwargs))
            raise

    def _call(self, op: Op, block: Block, mod: nn.Module, path: str, a: list[Any], kw: dict[str, Any]) -> Any:
        try:
            return super()._call(op, block, mod, path, a, kw)
        except Exception as e:
            if not isinstance(op.target, ChildCall):  # a child's failure is kept by run_node, innermost
                self._failed(Failure(path, f"{block.cls.name}, op {op.name!r}", type_of(tuple(a), None, self.meta_is),
                                     _cause(e), None, _op_call(op), tuple(a), kw))
            raise

    def join(self, how: Combine, values: list[Any], mod: nn.Module, path: str) -> Any:
        """As ``Interpreter.join``; a failure is kept as the join's, on the values it joins."""
        try:
            return super().join(how, values, mod, path)
        except Exception as e:
            self._failed(Failure(path, f"combine {how}", type_of(tuple(values), None, self.meta_is), _cause(e)))
            raise


def replay_failures(model: Model) -> tuple[TrialPlan, list[Failure | None]] | None:
    """The trial plan for ``model``'s inputs and, per run, the innermost failure of its IR replay (None where it
    ran); None when the model cannot be replayed from its IR on meta inputs at all."""
    plan = trial_plan([i.type for i in model.inputs])
    examples = [example_inputs(model, sizes) for sizes in plan.runs] if plan is not None else []
    if plan is None or not examples or any(e is None for e in examples):
        return None
    built = build_from_ir(model)
    device = next((i.type.device for i in model.inputs if isinstance(i.type, TensorType)), "cpu")
    failures: list[Failure | None] = []
    for example in examples:
        assert example is not None
        replay = FailureReplay({}, {}, device=device)
        try:
            with torch.no_grad():
                replay.run_node(model.root, built, "", *example)
        except Exception as e:  # noqa: BLE001 - any failure of the model is reported with its path
            failures.append(replay.failure or Failure("", type(model.root).__name__,
                                                      type_of(example[0], None, device), e))
        else:
            failures.append(None)
    return plan, failures


def explain_failure(model: Model, subject: str) -> tuple[IRError, Exception] | None:
    """The error saying why ``model`` (``subject``: "the hand-built model") does not run on its input types,
    and torch's error under it; None when every replay runs (the failure was elsewhere)."""
    replayed = replay_failures(model)
    if replayed is None:
        return None
    plan, runs = replayed
    fails = [f for f in runs if f is not None]
    if not fails:
        return None
    first = next(i for i, f in enumerate(runs) if f is not None)
    f = fails[0]
    device = next((i.type.device for i in model.inputs if isinstance(i.type, TensorType)), "cpu")
    sizes = f" [trial sizes {plan.sizes(first)}]" if plan.symbols else ""
    if first == 0 and len(fails) == len(runs) and all(g.path == f.path for g in fails):
        inputs = _symbolic_inputs(plan, fails, device)
        error = cpu_error(f) or f.error
        message = symbolic_message(f"{type(error).__name__}: {error}", symbol_map(f.inputs, inputs, plan.runs[0]))
        return IRError(f"{subject} fails at {where(f.path)} ({f.what}) on input {show_inputs(inputs)}: "
                       f"{message}{sizes}; fix the arguments of that node, or of the node feeding it, so the two "
                       "agree"), f.error
    return IRError(f"{subject} runs at {plan.sizes(0)} but fails at {where(f.path)} ({f.what}) at "
                   f"{plan.sizes(first)} on input {show_inputs(f.inputs)}: {type(f.error).__name__}: {f.error}; "
                   "that dim cannot vary: fix it to a size in the input types"), f.error


def _symbolic_inputs(plan: TrialPlan, fails: Sequence[Failure], device: str) -> ValueType:
    """The failing node's input types, merged over the runs into symbolic ones (as run 0 has them if not)."""
    try:
        return plan.merge([g.inputs for g in fails], fails[0].path, device)
    except IRError:
        return fails[0].inputs


def cpu_error(failure: Failure) -> Exception | None:
    """The error the failing layer (or op) raises on the CPU, on zero arguments of the same shapes.

    None when it is too large to rerun, cannot be rerun, or does not fail on the CPU.

    >>> cpu_error(Failure("1", "Conv2d", t, RuntimeError("Invalid channel dims"), conv, None, (x,)))  # doctest: +SKIP
    RuntimeError('Given groups=1, weight of size [8, 4, 3, 3], expected input[11, 8, 30, 30] to have 4 channels...')
    """
    mod = failure.module
    if mod is None and failure.call is None:
        return None
    sizes: list[int] = [t.numel() for t in (*mod.parameters(), *mod.buffers())] if mod is not None else []
    tree_map_only(torch.Tensor, lambda t: sizes.append(t.numel()), (failure.args, failure.kwargs))
    if sum(sizes) > MAX_RERUN:
        return None
    try:
        call = copy.deepcopy(mod).to_empty(device="cpu") if mod is not None else failure.call
        args, kwargs = tree_map_only(torch.Tensor, lambda t: torch.zeros(t.shape, dtype=t.dtype),
                                     (failure.args, failure.kwargs))
    except Exception:  # noqa: BLE001 - no CPU twin: the meta error stands
        return None
    assert call is not None
    try:
        with torch.no_grad():
            call(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the message is what we want
        return e
    return None


def show_inputs(t: ValueType) -> str:
    """A node's argument types as a call shows them: ``f32[N, 8]`` or ``f32[N, 8], i64[N]``.

    >>> show_inputs(ScalarType("tuple", (TensorType(("N", 8)), TensorType(("N",), "int64"))))
    'f32[N, 8], i64[N]'
    """
    if isinstance(t, ScalarType) and t.name == "tuple":
        return ", ".join(map(str, t.items)) or "no arguments"
    return str(t)


def _dims(t: ValueType) -> list[Dim]:
    if isinstance(t, TensorType):
        return list(t.shape)
    if isinstance(t, ScalarType):
        return [d for i in t.items for d in _dims(i)]
    return []


def symbol_map(concrete: ValueType, symbolic: ValueType, sizes: Mapping[str, int]) -> dict[int, str]:
    """Trial numbers → what they stand for: each symbol's size, each derived dim's value, and the product of
    two symbols (a batch and a sequence flattened by a layer: ``N*T``).

    >>> symbol_map(TensorType((11, 44)), TensorType(("N", "N*4")), {"N": 11})
    {11: 'N', 44: 'N*4', 121: 'N*N'}
    """
    out: dict[int, str] = {v: s for s, v in sizes.items()}
    for c, s in zip(_dims(concrete), _dims(symbolic)):
        if isinstance(c, int) and isinstance(s, str):
            out.setdefault(c, s)
    for a, b in itertools.combinations_with_replacement(sizes, 2):
        out.setdefault(sizes[a] * sizes[b], f"{a}*{b}")
    return out


_SHAPE_LIST = re.compile(r"[\[(]\s*\d+(?:\s*,\s*\d+)*\s*,?\s*[\])]|\b\d+(?:x\d+)+\b")


def symbolic_message(text: str, numbers: Mapping[int, str]) -> str:
    """``text`` with the trial numbers inside shapes (``[11, 8, 30, 30]``, ``11x8``) replaced by symbols.

    >>> symbolic_message("mat1 and mat2 shapes cannot be multiplied (11x1024 and 10x4)", {11: "N"})
    'mat1 and mat2 shapes cannot be multiplied (Nx1024 and 10x4)'
    """
    def swap(m: re.Match[str]) -> str:
        return re.sub(r"\d+", lambda n: numbers.get(int(n.group()), n.group()), m.group())

    return _SHAPE_LIST.sub(swap, text)


__all__ = ["MAX_RERUN", "Failure", "FailureReplay", "cpu_error", "explain_failure", "replay_failures",
           "show_inputs", "symbol_map", "symbolic_message"]

"""One capture per loss, put together: each loss's own graph, and the system's forward running them all.

Each loss function is captured alone (``losses.capture_losses``: a ``SystemLosses`` probe holding
every model, the same children names, that one loss as its forward), so its graph holds exactly
the ops that function runs: the emitted ``<model>_loss`` method computes that loss and nothing
else. ``combined`` then makes the one captured model ``merge.merged`` expects: the root's
constants renamed apart (two losses may each hold a ``_tensor_constant0``), the graphs run one
after another (values renamed apart) and their results returned as a tuple, in order.

The guards capture wrote into a loss's graph speak of ``<root> (SystemLosses)`` and of
``torchgraft.capture(model, examples=...)``, which a System does not offer: ``for_system``
rewrites them to name the loss and to say to make the System with another ``example_batch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchgraft.errors import CaptureError
from torchgraft.frontends.guards import HOW, where_text
from torchgraft.ir.graph import GetAttr, Graph, Guard, Op
from torchgraft.ir.model import Helper, Model, merge_helpers
from torchgraft.ir.nodes import Block
from torchgraft.ir.types import ScalarType, ValueType
from torchgraft.ir.values import Arg, Seq, rename_refs
from torchgraft.system.errors import SystemSpecError
from torchgraft.system.probe import SystemLosses

SYSTEM_HOW = ("make the System with an example_batch that takes the path you need: System(models=..., losses=..., "
              "optimizers=..., example_batch={...})")
"""What a loss's guard tells the user to do (instead of ``frontends.guards.HOW``)."""


@dataclass(frozen=True, slots=True)
class LossGraph:
    """One loss as captured: its graph (``body``; ``train_body`` when training mode differs) and its type.

    >>> LossGraph("net", graph, None, TensorType((), "float32", "cpu")).name  # doctest: +SKIP
    'net'
    """

    name: str
    body: Graph
    train_body: Graph | None
    type: ValueType


def for_system(name: str, message: str) -> str:
    """A guard message of loss ``name`` as a System user reads it.

    >>> for_system("gen", "<root> (SystemLosses) was captured with 1 keyword arguments in **batch; " + HOW)
    "loss 'gen' was captured with 1 entries in batch; make the System with an example_batch that takes the path \
you need: System(models=..., losses=..., optimizers=..., example_batch={...})"
    """
    text = message.replace(where_text("", SystemLosses.__name__), f"loss {name!r}")
    text = text.replace(HOW, SYSTEM_HOW).replace("keyword arguments in **batch", "entries in batch")
    return text.replace("capture with an example", "make the System with an example_batch")


def _guards_for_system(name: str, g: Graph | None) -> Graph | None:
    if g is None:
        return None

    def rewritten(op: Op) -> Op:
        if not isinstance(op.target, Guard):
            return op
        message = for_system(name, op.target.message)
        return dataclasses.replace(op, target=dataclasses.replace(op.target, message=message))
    return dataclasses.replace(g, ops=tuple(rewritten(op) for op in g.ops))


def _root(model: Model, name: str) -> Block:
    root = model.root
    if not isinstance(root, Block) or not isinstance(root.body, Graph) or not isinstance(root.train_body, (Graph,
                                                                                                          type(None))):
        raise CaptureError(f"loss {name!r}: internal: its capture is not a Block with a graph forward", "")
    return root


def _unwrapped(g: Graph | None, name: str) -> Graph | None:
    """``g`` returning the loss itself, not the probe's 1-tuple of it."""
    if g is None:
        return None
    if not isinstance(g.output, Seq) or len(g.output.items) != 1:
        raise CaptureError(f"loss {name!r}: internal: its capture does not return the probe's 1-tuple", "")
    return dataclasses.replace(g, output=g.output.items[0])


def _free(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    return out


def _rename_attrs(g: Graph | None, mapping: Mapping[str, str]) -> Graph | None:
    """``g`` with reads of the root's own attributes (``GetAttr``) renamed through ``mapping``."""
    if g is None or not mapping:
        return g

    def renamed(op: Op) -> Op:
        if not isinstance(op.target, GetAttr):
            return op
        head, _, rest = op.target.path.partition(".")
        if head not in mapping:
            return op
        return dataclasses.replace(op, target=GetAttr(mapping[head] + ("." + rest if rest else "")))
    return dataclasses.replace(g, ops=tuple(renamed(op) for op in g.ops))


def _renamed_apart(name: str, model: Model, taken: set[str]) -> Model:
    """``model`` (loss ``name``'s capture) with its root's own state and constants renamed apart from ``taken``
    (which it then joins), and its guards rewritten for a System."""
    root = _root(model, name)
    own = [s.name for s in root.state] + [n for n, _ in root.constants]
    mapping: dict[str, str] = {}
    for n in own:
        mapping[n] = _free(n, taken) if n in taken else n
        taken.add(mapping[n])
    mapping = {k: v for k, v in mapping.items() if k != v}
    root = dataclasses.replace(
        root, state=tuple(dataclasses.replace(s, name=mapping.get(s.name, s.name)) for s in root.state),
        constants=tuple((mapping.get(n, n), c) for n, c in root.constants),
        body=_guards_for_system(name, _rename_attrs(_unwrapped(root.body, name), mapping)),  # type: ignore[arg-type]
        train_body=_guards_for_system(name, _rename_attrs(_unwrapped(root.train_body, name), mapping)))  # type: ignore
    out = model.output_type
    out = out.items[0] if isinstance(out, ScalarType) and out.name == "tuple" and len(out.items) == 1 else out
    constants = {mapping.get(k, k): v for k, v in model.constants.items()}
    weights = {mapping.get(k, k): v for k, v in model.weights.items()}
    return model.with_root(root, constants=constants, weights=weights, output_type=out)


def _values_apart(g: Graph, taken: set[str]) -> tuple[list[Op], Arg]:
    """``g``'s ops renamed to names not in ``taken`` (which they then join), and ``g``'s output renamed alike."""
    mapping: dict[str, str] = {}
    ops = []
    for op in g.ops:
        new = _free(op.name, taken)
        taken.add(new)
        if new != op.name:
            mapping[op.name] = new
        ops.append(dataclasses.replace(op, name=new, args=tuple(rename_refs(a, mapping) for a in op.args),
                                       kwargs=tuple((k, rename_refs(a, mapping)) for k, a in op.kwargs)))
    return ops, rename_refs(g.output, mapping)


def _chained(graphs: list[Graph]) -> Graph:
    """One graph running ``graphs`` (same inputs) in order and returning their outputs as a tuple."""
    inputs = graphs[0].inputs
    if any(g.inputs != inputs for g in graphs):
        raise CaptureError("internal: the losses were captured with different inputs; capture them again", "")
    taken = {i.name for i in inputs}
    ops: list[Op] = []
    outputs: list[Arg] = []
    for g in graphs:
        renamed, out = _values_apart(g, taken)
        ops += renamed
        outputs.append(out)
    return Graph(inputs, tuple(ops), Seq(tuple(outputs), False))


def _helpers(captures: Mapping[str, Model]) -> tuple[Helper, ...]:
    def clash(first: str, other: str, name: str) -> SystemSpecError:
        return SystemSpecError(f"losses {first!r} and {other!r} both call a function named "
                               f"{name.split(':', 1)[-1]!r} with different code; one emitted file cannot "
                               "hold both: rename the function one of them calls")

    return tuple(h for h, _ in merge_helpers(((n, m.helpers) for n, m in captures.items()), clash).values())


def combined(captures: Mapping[str, Model], models: tuple[str, ...]) -> tuple[Model, dict[str, LossGraph]]:
    """The losses' captures (in order) as one captured model, and each loss's own graph in it.

    ``models`` are the model names (the probe's children), which no root constant may take.

    >>> model, graphs = combined({"generator": g_capture, "discriminator": d_capture}, ("generator", "discriminator"))
    ... # doctest: +SKIP
    >>> list(graphs), model.output_type  # doctest: +SKIP
    (['generator', 'discriminator'], ScalarType(name='tuple', ...))
    """
    taken = set(models)
    parts = {n: _renamed_apart(n, m, taken) for n, m in captures.items()}
    roots = {n: _root(m, n) for n, m in parts.items()}
    graphs = {n: LossGraph(n, r.body, r.train_body, m.output_type)  # type: ignore[arg-type]
              for (n, r), m in zip(roots.items(), parts.values())}
    first = next(iter(parts.values()))
    bodies = [r.body for r in roots.values()]
    trains = [r.train_body if r.train_body is not None else r.body for r in roots.values()]
    any_train = any(r.train_body is not None for r in roots.values())
    root = dataclasses.replace(
        first.root, state=tuple(s for r in roots.values() for s in r.state),
        constants=tuple(c for r in roots.values() for c in r.constants),
        body=_chained(bodies), train_body=_chained(trains) if any_train else None,  # type: ignore[arg-type]
        method="trace" if any(r.method == "trace" for r in roots.values()) else first.root.method)  # type: ignore
    out_type = ScalarType("tuple", tuple(g.type for g in graphs.values()))
    constants: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    for m in parts.values():
        constants.update(m.constants)
        weights.update(m.weights)
    types = (("", out_type),) + tuple((p, t) for p, t in first.types if p)
    model = first.with_root(root, output_type=out_type, types=types, helpers=_helpers(parts), constants=constants,
                            weights=weights)
    return model, graphs

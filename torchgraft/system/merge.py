"""Swap a captured ``SystemLosses`` probe's re-captured children for the system's own model IRs.

The result is one ``ir.Model`` named ``System``: its root Block keeps the probe's traced body
(the losses) and holds each model's own root under the model's name; weights, constants,
extra states, ties, types and frozen keys are the models', under that name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torchgraft.ir.functions import helper_name
from torchgraft.ir.graph import FunctionCall, Graph
from torchgraft.ir.model import Helper, Model, merge_helpers
from torchgraft.ir.nodes import Block, ClassRef
from torchgraft.ir.traverse import join
from torchgraft.ir.verify import verify
from torchgraft.system.errors import SystemSpecError

SYSTEM_CLASS = ClassRef("torchgraft.system", "System")
"""The class recorded on the system's root Block (the emitted ``class System(nn.Module)``)."""


def _prefixed(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {join(name, k): v for k, v in values.items()}


def _under(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k[len(name) + 1:]: v for k, v in values.items() if k.startswith(name + ".")}


def _check_keys(captured: Model, models: Mapping[str, Model]) -> None:
    assert isinstance(captured.root, Block)
    names = [n for n, _ in captured.root.children]
    if names != list(models):
        raise SystemSpecError(f"internal: the captured losses hold the models {names}, not {list(models)}")
    for name, model in models.items():
        got, want = set(_under(captured.weights, name)), set(model.weights)
        if got != want:
            diff = sorted(got ^ want)[:5]
            raise SystemSpecError(f"model {name!r}: its emitted module has state keys that differ from its IR's "
                                  f"({diff}); emit and reload it (tg.emit(model).materialize()) to find out why")


def _referenced(root: Block) -> set[str]:
    """Names of the helper functions the root's own forward calls."""
    graphs = [g for g in (root.body, root.train_body) if isinstance(g, Graph)]
    return {name for g in graphs for op in g.ops if isinstance(op.target, FunctionCall)
            for name in [helper_name(op.target.qualname)] if name is not None}


def _helpers(captured: Model, models: Mapping[str, Model]) -> tuple[Helper, ...]:
    def clash(first: str, other: str, name: str) -> SystemSpecError:
        return SystemSpecError(f"models {first!r} and {other!r} both need a helper named "
                               f"{name!r} with different code; one emitted file "
                               "cannot hold both: rename the function in one model's source")

    found = merge_helpers(((n, m.helpers) for n, m in models.items()), clash)
    out = {k: h for k, (h, _) in found.items()}
    owner = {k: o for k, (_, o) in found.items()}
    assert isinstance(captured.root, Block)
    used = _referenced(captured.root)
    for h in captured.helpers:
        if h.key in out and out[h.key].source != h.source and h.name in used:
            raise SystemSpecError(f"a loss calls a helper named {h.name!r} which model {owner[h.key]!r} also has, "
                                  "with different code: rename the loss's function")
        out.setdefault(h.key, h)
    return tuple(out[k] for k in sorted(out))


def merged(captured: Model, models: Mapping[str, Model], frozen: tuple[str, ...]) -> Model:
    """The ``System`` model: ``captured``'s root body over the models' own roots (checked by ``ir.verify``).

    >>> merged(capture(probe, (), batch), {"net": net}, ()).root.children[0][1] is net.root  # doctest: +SKIP
    True
    """
    _check_keys(captured, models)
    root = captured.root
    assert isinstance(root, Block)
    root = replace(root, cls=SYSTEM_CLASS, children=tuple((n, m.root) for n, m in models.items()))
    weights: dict[str, Any] = {}
    constants = {k: v for k, v in captured.constants.items() if k.split(".", 1)[0] not in models}
    extra: dict[str, Any] = {}
    types = [("", captured.type_at(""))]
    ties: list[tuple[str, str]] = []
    for name, m in models.items():
        weights.update(_prefixed(m.weights, name))
        constants.update(_prefixed(m.constants, name))
        extra.update(_prefixed(m.extra_state, name))
        types += [(name, m.output_type)] + [(join(name, p), t) for p, t in m.types if p]
        ties += [(join(name, a), join(name, t)) for a, t in m.ties]
    frozen_all = tuple(join(n, k) for n, m in models.items() for k in m.frozen) + frozen
    system = Model("System", root, captured.inputs, captured.output_type, tuple(sorted(types)), tuple(ties),
                   _helpers(captured, models), frozen=frozen_all, weights=weights, report=captured.report,
                   constants=constants, extra_state=extra)
    verify(system)
    return system

"""Constants of a forward that differ between instances become attributes (``self.p``).

fx bakes attribute values into the graph (``stochastic_depth(x, 0.0125, "row", ...)``);
instances whose forwards differ only there share a class that stores the value in
``__init__`` and reads it back in ``forward``. Recapturing such a class gives the same
constant again, because fx reads ``self.p`` while tracing.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from dataclasses import dataclass, replace

from torchgraft.backends.torch.ctor import Lit
from torchgraft.backends.torch.groups import Group
from torchgraft.backends.torch.unify import Unifier
from torchgraft.backends.torch.valnames import hint, ident
from torchgraft.backends.torch.variants import lowered, map_arg, op_consts
from torchgraft.ir.functions import helper_name, resolve
from torchgraft.ir.graph import FunctionCall, Graph, Input, Op
from torchgraft.ir.model import Helper, HelperKind
from torchgraft.ir.opkinds import OpKind, is_operator, kind_of
from torchgraft.ir.values import Const, Ref

Position = tuple[str, int, int]
"""(``"body"``, ``"train"`` or ``"alt"``, op index in the merged graph, constant index within the op)."""


@dataclass
class Lifted:
    """Which constants of the merged forward are read from attributes: position -> hole index."""

    positions: dict[Position, int]


def _value(group: Group, k: int, sel: str, i: int, j: int) -> Lit | None:
    var = group.variant_of[k]
    fam = group.family
    m = fam.alt_maps.get(var, []) if sel == "alt" else fam.maps[var][0 if sel == "body" else 1]
    vi = m[i] if i < len(m) else None
    if vi is None:
        return None
    body, train = lowered(group.insts[k][1])
    g = train if sel == "train" else body
    assert g is not None
    return Lit(op_consts(g.ops[vi])[j].value)


def lift_consts(group: Group, u: Unifier, helpers: tuple[Helper, ...]) -> Lifted:
    """Holes for the forward constants that differ between the group's instances."""
    out: dict[Position, int] = {}
    for sel, merged in (("body", group.family.body), ("train", group.family.train), ("alt", group.family.alt)):
        if merged is None:
            continue
        for i, op in enumerate(merged.ops):
            for j in range(len(op_consts(op))):
                values = [_value(group, k, sel, i, j) for k in range(len(group.insts))]
                present = [v for v in values if v is not None]
                if present and any(v != present[0] for v in present):
                    out[(sel, i, j)] = u.hole(values, ("forward", const_site(op, j, helpers))).index  # type: ignore[arg-type]
    return Lifted(out)


def apply_lifting(g: Graph, sel: str, lifted: Lifted, attr_of: dict[int, str]) -> tuple[Graph, dict[str, str]]:
    """``g`` with lifted constants read from extra inputs, and those inputs -> ``self.<attr>`` code."""
    synthetic: dict[int, str] = {}
    ops = []
    for i, op in enumerate(g.ops):
        counter = itertools.count()

        def on_const(c: Const, i: int = i, counter: itertools.count[int] = counter) -> object:
            h = lifted.positions.get((sel, i, next(counter)))
            return c if h is None else Ref(synthetic.setdefault(h, f"_tg_attr{h}"))

        args, values = map_arg((op.args, tuple(v for _, v in op.kwargs)), lambda r: r, on_const)
        ops.append(replace(op, args=args, kwargs=tuple(zip((k for k, _ in op.kwargs), values, strict=True))))
    inputs = g.inputs + tuple(Input(name) for name in synthetic.values())
    return Graph(inputs, tuple(ops), g.output), {name: f"self.{attr_of[h]}" for h, name in synthetic.items()}


def const_site(op: Op, j: int, helpers: tuple[Helper, ...]) -> str:
    """The argument name the ``j``-th constant of ``op`` is passed as (``p``, ``dim``, ``view_arg``)."""
    count = 0
    params = _param_names(op, helpers)
    for i, a in enumerate(op.args):
        count += len(op_consts(Op("v", op.target, (a,))))
        if j < count:
            return params[i] if i < len(params) and params[i] else f"{hint(op) or 'forward'}_arg"
    for k, v in op.kwargs:
        count += len(op_consts(Op("v", op.target, (v,))))
        if j < count:
            return ident(k) or "arg"
    return "arg"


_OPERATOR_ARGS = {OpKind.MUL: "scale", OpKind.TRUEDIV: "divisor", OpKind.FLOORDIV: "divisor", OpKind.ADD: "offset",
                  OpKind.SUB: "offset", OpKind.POW: "exponent", OpKind.MOD: "modulus"}


def _param_names(op: Op, helpers: tuple[Helper, ...]) -> list[str]:
    t = op.target
    found = kind_of(op) if is_operator(op) else None
    if found is not None:
        word = _OPERATOR_ARGS.get(found.kind, "")
        return [word, word]
    fn = helper_name(t.qualname) if isinstance(t, FunctionCall) else None
    if fn is not None:
        for h in helpers:
            if h.name == fn and h.kind is HelperKind.FUNCTION:
                return _ast_params(h.source, fn)
        return []
    if isinstance(t, FunctionCall):
        try:
            return list(inspect.signature(resolve(t.qualname)).parameters)
        except Exception:  # noqa: BLE001 - builtins and some C functions have no signature
            return []
    return []


def _ast_params(source: str, name: str) -> list[str]:
    """Parameter names of function ``name`` in ``source`` (parsed, never run)."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return [a.arg for a in node.args.posonlyargs + node.args.args]
    return []

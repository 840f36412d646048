"""Structural equality of an IR and the capture of the model emitted from it.

``capture(emit(model).materialize())`` gives back the same structure, up to what emission
writes differently by design. ``normal_form`` removes exactly those differences:

- value names and types (emission renames values; types are re-inferred at capture);
- the class's module (the emitted file's name) — class names are compared, and an emitted
  variant class (``BottleneckDownsample``) matches the original name it starts with;
- pure ops whose result nobody reads (emission leaves them out, ``forward.prune``), and the
  order of metadata reads (``x.shape[0]``, ``self.p``: emission writes them where they are
  used, so they compare as part of the expression that reads them);
- functional activations written from a combinator body (``Activation`` spelled as a module
  call there is written ``F.relu(x)``, which captures with the functional spelling);
- module-level ``SkipConnection``/``Parallel`` nodes, which ``model.py`` writes as small
  runtime classes of those names: they compare as the Blocks capture makes of those classes;
- how a primitive's fields are spelled: primitives compare by the constructor call written for
  them (``Conv2d(..., output_padding=(0, 0))`` and ``output_padding=0`` are the same layer);
- how a forward was captured (``Block.method``) and ``Block.constants``;
- an activation wrapper Block (``return F.silu(input)``), which ``model.py`` writes as the torch layer it is
  (``nn.SiLU()``, ``act_layers``): it compares as that layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from torchgraft.backends.torch.act_layers import activation_of
from torchgraft.backends.torch.forward import is_movable, prune, tuple_inputs
from torchgraft.backends.torch.modules import prim_expr
from torchgraft.backends.torch.variants import arg_key, lowered
from torchgraft.ir.activations import Spelling
from torchgraft.ir.combine import Combine, combine_ops
from torchgraft.ir.effects import writes_shape
from torchgraft.ir.graph import ChildCall, Graph, Input, InputKind, Op, PrimCall
from torchgraft.ir.idioms import simplified
from torchgraft.ir.lower import leaf_sites, lower_body
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import (
    Block,
    Chain,
    ChildRef,
    ClassRef,
    Container,
    Node,
    Opaque,
    Parallel,
    PySource,
    SkipConnection,
)
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.structure import recognize
from torchgraft.ir.traverse import node_at
from torchgraft.ir.values import Ref


def _target(op: Op) -> object:
    t = op.target
    if isinstance(t, PrimCall) and isinstance(t.prim, Activation) and t.prim.spelling is Spelling.MODULE:
        return PrimCall(dataclasses.replace(t.prim, spelling=Spelling.FUNCTIONAL))
    return t


def graph_form(g: Graph) -> tuple[Any, ...]:
    """A Graph up to value names and types, without unread pure ops."""
    g = prune(simplified(g))  # as the emitter writes it (ir.idioms)
    by_name = {op.name: op for op in g.ops}
    tuples = tuple_inputs(g)
    stable = not writes_shape(g)
    names: dict[str, object] = {inp.name: ("in", i) for i, inp in enumerate(g.inputs)}
    ops: list[object] = []
    for op in g.ops:
        form = (_target(op), arg_key(op.args, names, True), tuple((k, arg_key(v, names, True)) for k, v in op.kwargs))
        if stable and is_movable(op, by_name, tuples):  # written where used: compared in the expression reading it
            names[op.name] = ("expr", form)
        else:
            names[op.name] = ("op", len(ops))
            ops.append(form)
    inputs = tuple((i.kind, i.default) for i in g.inputs)
    return "graph", inputs, tuple(ops), arg_key(g.output, names, True)


def _combine(how: Combine, values: list[str], ops: list[Op]) -> str:
    """The ops the runtime class's ``join`` traces to (``combine_ops``: the same for every kind)."""
    count = iter(range(len(values) + 1))
    new, out = combine_ops(how, values, lambda base: f"acc{next(count)}")
    ops += new
    return out


def runtime_block(node: SkipConnection | Parallel) -> Block:
    """The Block that capture makes of the runtime class ``model.py`` writes for ``node``."""
    ops: list[Op] = []
    if isinstance(node, SkipConnection):
        ops.append(Op("body", ChildCall("body"), (Ref("x"),)))
        out = _combine(node.combine, ["x", "body"], ops)
        kids: tuple[tuple[str, Node], ...] = (("body", node.body),)
    else:
        ops += [Op(f"b{n}", ChildCall(n), (Ref("x"),)) for n in node.names]
        out = _combine(node.combine, [f"b{n}" for n in node.names], ops)
        kids = node.named()
    name = "SkipConnection" if isinstance(node, SkipConnection) else "Parallel"
    return Block(ClassRef("", name), kids, Graph((Input("x"),), tuple(ops), Ref(out)))


def normal_form(node: Node | Model) -> Any:
    """A comparable value for a model or node (see the module docstring for what it ignores)."""
    if isinstance(node, Model):
        return normal_form(node.root)
    if isinstance(node, (SkipConnection, Parallel)):
        return normal_form(runtime_block(node))
    act = activation_of(node) if isinstance(node, Block) else None
    if act is not None:
        return normal_form(act)
    if isinstance(node, Block) and isinstance(node.body, PySource):
        kids = tuple((n, normal_form(c)) for n, c in node.children)
        return "block", node.cls.name, kids, node.state, ("source", node.body.source), node.body.attrs
    if isinstance(node, Block):
        body, train = lowered(node)
        body = _as_structure(body, node) if train is None else body
        state = tuple((s.name, s.shape, s.dtype, s.parameter, s.persistent) for s in node.state)
        kids = tuple((n, normal_form(c)) for n, c in node.children)
        return "block", node.cls.name, kids, state, graph_form(body), None if train is None else graph_form(train)
    if isinstance(node, Chain):
        return "chain", node.names, tuple(normal_form(i) for i in node.items)
    if isinstance(node, Container):
        return "container", node.kind, tuple((n, normal_form(c)) for n, c in node.items)
    if isinstance(node, Opaque):
        return "opaque", node.cls.name, node.state
    if isinstance(node, ChildRef):
        return "ref", node.path
    return "prim", prim_expr(node)  # type: ignore[arg-type]


def _as_structure(body: Graph, block: Block) -> Graph:
    """A forward that is only structure, in the one order its lowering writes: capture stores such a forward as
    structure (``ir.stored``), so ``out + x`` and ``x + out`` compare as the same ``SkipConnection``."""
    if len(body.inputs) != 1 or body.inputs[0].kind is not InputKind.POSITIONAL or body.inputs[0].default is not None:
        return body
    form = recognize(body, functools.partial(node_at, block))
    if isinstance(form, Graph) or not all(isinstance(n, (ChildRef, Primitive)) for _, n in leaf_sites(form)):
        return body
    return lower_body(form, name=body.inputs[0].name)


def first_difference(original: Any, recaptured: Any, path: str = "") -> str | None:
    """Where two normal forms differ first ("" for the root), None when they are equal.

    Block class names match when the recaptured one starts with the original's (variant classes).
    """
    a, b = original, recaptured
    if (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == 6 and a[:1] == b[:1] == ("block",)
            and isinstance(a[1], str) and isinstance(b[1], str)):
        if not b[1].startswith(a[1]):
            return f"{path or '<root>'}: class {a[1]} became {b[1]}"
        return first_difference(a[2:], b[2:], path)
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            sub = _child_path(path, x, y, i)
            found = first_difference(x, y, sub)
            if found is not None:
                return found
        return None
    return None if a == b else f"{path or '<root>'}: {a!r} != {b!r}"


_TAGS = frozenset({"block", "chain", "container", "opaque", "ref", "prim", "graph", "in", "op", "const", "expr"})


def _child_path(path: str, x: object, y: object, i: int) -> str:
    """``path`` extended by a child's name when ``x`` is a (name, form) pair."""
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and x[0] not in _TAGS:
        return f"{path}.{x[0]}" if path else x[0]
    return path

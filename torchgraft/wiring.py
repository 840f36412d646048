"""The wired form of ``torchgraft.compose``: a Block whose forward Graph calls each model.

``wired(parts, wiring, outputs, name)`` reads the wiring (``{"head.a": "image_tower", ...}``,
see ``compose``), checks it (names, types, cycles, unwired inputs, unused models), and builds
the root: one ``ChildCall`` op per model in dataflow order, the composed inputs as the Graph's
inputs, and the outputs as a value, tuple or dict.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from torchgraft.compose import Outputs, Part, check_seam, merged
from torchgraft.errors import IRError
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, InputKind, Op
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef
from torchgraft.ir.types import UNKNOWN, ScalarType, TensorType, ValueType
from torchgraft.ir.values import Arg, Const, DictArg, Ref, Seq


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value comes from: a composed input (``model`` empty), a model's output, or an item of it."""

    name: str
    model: str = ""
    key: str | int | None = None

    def __str__(self) -> str:
        if not self.model:
            return f"input {self.name!r}"
        return f"the output of {self.model!r}" + ("" if self.key is None else f" at [{self.key!r}]")


def _source(text: str, parts: Mapping[str, Part]) -> Source:
    if not isinstance(text, str) or not text:
        raise IRError(f"compose: a wiring source must be a non-empty string, got {text!r}")
    model, dot, key = text.partition(".")
    if model in parts:
        if not dot:
            return Source(text, model)
        item = int(key) if key.isdigit() else key
        return Source(f"{model}.{item}", model, item)  # one spelling per item: "enc.01" is "enc.1"
    if dot:
        raise IRError(f"compose: wiring source {text!r} names no model (models: {sorted(parts)}); write "
                      "'model' or 'model.key', or a plain name for an input of the composed model")
    if not text.isidentifier() or keyword.iskeyword(text):
        raise IRError(f"compose: input name {text!r} must be a Python identifier")
    return Source(text)


def _target(key: str, parts: Mapping[str, Part]) -> tuple[Part, Input]:
    model, dot, inp = key.partition(".") if isinstance(key, str) else ("", "", "")
    part = parts.get(model)
    if part is None:
        raise IRError(f"compose: wiring key {key!r} names no model; models: {sorted(parts)} (write 'model' "
                      "or 'model.input')")
    names = [i.name for i in part.inputs]
    if not dot:
        if len(part.required()) > 1:
            raise IRError(f"compose: model {model!r} takes {[i.name for i in part.required()]}; wire each as "
                          f"'{model}.<input>'")
        return part, (part.required() or part.inputs)[0]
    if not part.known:
        raise IRError(f"compose: model {model!r} records no input names (a captured nn.Sequential); wire its "
                      f"one input as {model!r}")
    found = [i for i in part.inputs if i.name == inp]
    if not found:
        raise IRError(f"compose: model {model!r} has no input {inp!r}; its inputs are {names}")
    if found[0].kind in (InputKind.VAR_POSITIONAL, InputKind.VAR_KEYWORD):
        raise IRError(f"compose: input {key!r} is *args/**kwargs and cannot be wired")
    return part, found[0]


def _edges(parts: list[Part], wiring: Mapping[str, str]) -> dict[str, dict[str, Source]]:
    """model name → {input name: source}, every required input wired."""
    by_name = {p.name: p for p in parts}
    edges: dict[str, dict[str, Source]] = {p.name: {} for p in parts}
    if not isinstance(wiring, Mapping):
        raise IRError(f"compose: wiring must be a dict of 'model.input' -> source, got {type(wiring).__name__}")
    for key, text in wiring.items():
        part, inp = _target(key, by_name)
        if inp.name in edges[part.name]:
            raise IRError(f"compose: input {inp.name!r} of model {part.name!r} is wired twice")
        edges[part.name][inp.name] = _source(text, by_name)
    for p in parts:
        missing = [i.name for i in p.required() if i.name not in edges[p.name]]
        if missing:
            raise IRError(f"compose: model {p.name!r} inputs {missing} are not wired; add "
                          f"{', '.join(repr(f'{p.name}.{m}') for m in missing)} to wiring")
    return edges


def _order(parts: list[Part], edges: dict[str, dict[str, Source]]) -> list[Part]:
    """``parts`` in dataflow order (stable), or IRError naming a cycle."""
    done: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = trail[trail.index(n):] + [n]
            raise IRError(f"compose: the wiring has a cycle {' -> '.join(cycle)}; a model cannot feed itself")
        state[n] = 1
        for s in edges[n].values():
            if s.model:
                visit(s.model, [*trail, n])
        state[n] = 2
        done.append(n)

    for p in parts:
        visit(p.name, [])
    by_name = {p.name: p for p in parts}
    return [by_name[n] for n in done]


def _default_wiring(parts: list[Part]) -> dict[str, str]:
    head = parts[0]
    out = {f"{head.name}.{i.name}": i.name for i in head.inputs
           if i.kind in (InputKind.POSITIONAL, InputKind.KEYWORD)}
    out.update({p.name: prev.name for prev, p in zip(parts, parts[1:])})
    return out


def _item_type(part: Part, key: str | int) -> ValueType:
    """The type of ``part``'s output at ``key`` (UNKNOWN when not recorded); IRError for a key it has not."""
    t, root = part.model.output_type, part.model.root
    where = f"compose: source '{part.name}.{key}'"
    if isinstance(t, TensorType):
        raise IRError(f"{where}: model {part.name!r} returns one tensor ({t}), not a tuple or dict; use "
                      f"{part.name!r}")
    if isinstance(root, Block) and isinstance(root.body, Graph) and isinstance(root.body.output, DictArg):
        keys = [k for k, _ in root.body.output.items]
        if key not in keys:
            raise IRError(f"{where}: model {part.name!r} returns a dict with keys {keys}")
        return t.items[keys.index(key)] if len(t.items) == len(keys) else UNKNOWN
    if isinstance(t, ScalarType) and t.name in ("tuple", "list") and t.items:
        if not isinstance(key, int) or key >= len(t.items):
            raise IRError(f"{where}: model {part.name!r} returns {t}, which has no item {key!r}")
        return t.items[key]
    return UNKNOWN


class _Builder:
    """Builds the Graph: composed inputs, one op per model, item ops for ``model.key`` sources."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = {p.name: p for p in parts}
        self.ops: list[Op] = []
        self.values: dict[Source, tuple[str, ValueType]] = {}
        self.inputs: dict[str, Input] = {}
        self.taken: set[str] = set()

    def fresh(self, base: str) -> str:
        name = base if base.isidentifier() and not keyword.iskeyword(base) else f"out_{base}"
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
        stem, k = name, 1
        while name in self.taken:
            name, k = f"{stem}_{k}", k + 1
        self.taken.add(name)
        return name

    def value(self, s: Source, part: Part, inp: Input) -> Ref:
        """The value of ``s`` (made on first use), type-checked against ``inp`` of ``part``."""
        if not s.model:
            t = check_seam(str(s), self.values[s][1], part, inp) if s in self.values else inp.type
            default = inp.default if inp.kind is InputKind.POSITIONAL else None
            old = self.inputs.get(s.name)
            if old is not None and old.default != default:
                default = None
            self.inputs[s.name] = Input(s.name, t, InputKind.POSITIONAL, default)
            self.values[s] = (s.name, t)
            return Ref(s.name)
        if s not in self.values:
            whole = Source(s.model, s.model)
            name, t = self.values[whole]
            item = self.fresh(f"{s.model}_{s.key}")
            it = _item_type(self.parts[s.model], s.key) if s.key is not None else t
            self.ops.append(Op(item, FunctionCall("operator.getitem"), (Ref(name), Const(s.key)), type=it))
            self.values[s] = (item, it)
        name, t = self.values[s]
        check_seam(str(s), t, part, inp)
        return Ref(name)

    def call(self, part: Part, wired: dict[str, Source]) -> None:
        args: list[Arg] = []
        kwargs: list[tuple[str, Arg]] = []
        last = max((k for k, i in enumerate(part.inputs) if i.name in wired), default=-1)
        for k, inp in enumerate(part.inputs):
            if inp.name in wired:
                ref = self.value(wired[inp.name], part, inp)
                (args.append(ref) if inp.kind is InputKind.POSITIONAL else kwargs.append((inp.name, ref)))
            elif inp.kind is InputKind.POSITIONAL and k < last:
                args.append(inp.default if inp.default is not None else Const(None))
        name = self.fresh(part.name)
        self.ops.append(Op(name, ChildCall(part.name), tuple(args), tuple(kwargs), part.model.output_type))
        self.values[Source(part.name, part.name)] = (name, part.model.output_type)


def _outputs(outputs: Outputs, parts: list[Part]) -> tuple[str | tuple[str, ...] | dict[str, str], list[str]]:
    if outputs is None:
        return parts[-1].name, [parts[-1].name]
    if isinstance(outputs, str):
        return outputs, [outputs]
    if isinstance(outputs, Mapping):
        return dict(outputs), list(outputs.values())
    if isinstance(outputs, Sequence):
        return tuple(outputs), list(outputs)
    raise IRError(f"compose: outputs must be a source, a tuple of sources or a dict, got {outputs!r}")


def _check_used(order: list[Part], edges: dict[str, dict[str, Source]], wanted: list[Source]) -> None:
    used = {s.model for s in wanted if s.model}
    for p in reversed(order):
        if p.name in used:
            used |= {s.model for s in edges[p.name].values() if s.model}
    unused = [p.name for p in order if p.name not in used]
    if unused:
        raise IRError(f"compose: the output of {unused} is never used; wire it into another model or list it "
                      "in outputs=")


def wired(parts: list[Part], wiring: Mapping[str, str] | None, outputs: Outputs, name: str) -> Model:
    """The composed Model as a Block with a Graph body over the models (see ``compose``)."""
    edges = _edges(parts, _default_wiring(parts) if wiring is None else wiring)
    order = _order(parts, edges)
    spec, listed = _outputs(outputs, parts)
    by_name = {p.name: p for p in parts}
    wanted = [_source(s, by_name) for s in listed]
    missing = [str(s) for s in wanted if not s.model]
    if missing:
        raise IRError(f"compose: outputs name {missing}, which are no models (models: {sorted(by_name)})")
    _check_used(order, edges, wanted)
    b = _Builder(parts)
    b.taken |= {s.name for e in edges.values() for s in e.values() if not s.model}
    for p in order:
        b.call(p, edges[p.name])
    out, out_type = _result(spec, b, by_name)
    inputs = tuple(sorted(b.inputs.values(), key=lambda i: i.default is not None))
    graph = Graph(inputs, tuple(b.ops), out)
    root = Block(ClassRef("torchgraft.compose", name), tuple((p.name, p.model.root) for p in parts), graph,
                 method="compose")
    return merged(parts, name, root, inputs, out_type)


def _result(spec: str | tuple[str, ...] | dict[str, str], b: _Builder, parts: Mapping[str, Part]
            ) -> tuple[Arg, ValueType]:
    def one(text: str) -> tuple[Ref, ValueType]:
        s = _source(text, parts)
        if s not in b.values:  # an item nobody consumed yet
            b.value(s, replace(parts[s.model], known=True), Input("out"))
        n, t = b.values[s]
        return Ref(n), t

    if isinstance(spec, str):
        return one(spec)
    if isinstance(spec, tuple):
        pairs = [one(s) for s in spec]
        return Seq(tuple(r for r, _ in pairs)), ScalarType("tuple", tuple(t for _, t in pairs))
    bad = [k for k in spec if not isinstance(k, str)]
    if bad:
        raise IRError(f"compose: output names must be strings, got {bad!r}")
    named = [(k, *one(v)) for k, v in spec.items()]
    return DictArg(tuple((k, r) for k, r, _ in named)), ScalarType("dict", tuple(t for _, _, t in named))

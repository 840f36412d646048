"""``universal``: an ``ir.Model`` generated from the specs of its inputs and outputs.

    image = Input(("N", 3, 64, 64), name="image")
    text = Input(("N", "L"), dtype="int64", vocab=1000, name="text")
    sound = Output(("N", 1, 4096), name="sound")
    m = universal(unaligned=[image, text], outputs=[sound], compute="medium")
    print(m.plan)              # per part: structure, model type, width, depth, params
    tg.emit(m).save("out/")    # model.py: def forward(self, image, text)

The root Block's children are one encoder per unaligned input (named after it), a stem per aligned
input (named after it), the shared ``aligned`` encoder when there are aligned inputs, the
``trunk`` (concatenates the encoders' vectors, Linear, MLP layers) and one decoder per output
(named after it). Its forward takes the inputs by name and returns the output, or a dict of the
outputs when there are several.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchgraft.composable.aligned import context, item, seq_decoder, stem, u_decoder, u_encoder, u_levels
from torchgraft.composable.checks import check_specs
from torchgraft.composable.decoders import fan_out, head
from torchgraft.composable.encoders import captured, captured_output, encoder
from torchgraft.composable.layers import MODULE, Built, Flow, mlp
from torchgraft.composable.plan import CONFIGS, LADDER, Config, Plan, PlanRow, count_params
from torchgraft.composable.spec import Input, Output, Spec, SpecError
from torchgraft.ir.graph import Input as GraphInput
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef, Node
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Arg, DictArg, Ref, Seq


@dataclass(frozen=True, slots=True)
class UniversalModel(Model):
    """An ``ir.Model`` made by ``universal``, with the ``plan`` it was built by (kept by ``replace``/``with_root``)."""

    plan: Plan | None = field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class _Specs:
    unaligned: tuple[Input, ...]
    aligned: tuple[Input, ...]
    outputs: tuple[Output, ...]
    encoders: Mapping[str, Model]
    encoder_types: Mapping[str, TensorType]


def _cfg(spec: Spec, cfg: Config) -> Config:
    return CONFIGS[spec.compute] if spec.compute in CONFIGS else cfg


def _trunk(sources: Sequence[str], cfg: Config, width: int) -> Built:
    f = Flow(*sources)
    x = f.fn("x", "torch.cat", Seq(tuple(f.ref(s) for s in sources)), 1) if len(sources) > 1 else f.ref(sources[0])
    out = f.child("out", "layers", f.child("h", "fuse", x))
    children = [("fuse", mlp([len(sources) * width, width])), ("layers", mlp([width] * (cfg.depth + 1)))]
    return Built(Block(ClassRef(MODULE, "Trunk"), tuple(children), f.graph(out)), "trunk", width, cfg.depth)


class _Assembly:
    """The root's children, plan rows and forward, built part by part."""

    def __init__(self, specs: _Specs, cfg: Config) -> None:
        self.specs, self.cfg, self.width = specs, cfg, cfg.width
        self.flow = Flow(*(GraphInput(s.name, s.type) for s in (*specs.unaligned, *specs.aligned)))
        self.children: list[tuple[str, Node]] = []
        self.rows: list[PlanRow] = []

    def add(self, name: str, role: str, structure: str, built: Built) -> None:
        self.children.append((name, built.node))
        self.rows.append(PlanRow(name, role, structure, built.model_type, built.width, built.depth,
                                 count_params(built.node)))

    def encoders(self) -> dict[str, Ref]:
        vectors = {}
        for s in self.specs.unaligned:
            if s.name in self.specs.encoders:
                built = captured(s, self.specs.encoders[s.name], self.specs.encoder_types[s.name], self.width)
            else:
                built = encoder(s, _cfg(s, self.cfg), self.width)
            self.add(s.name, "input", s.describe(), built)
            vectors[s.name] = self.flow.child(f"{s.name}_vec", s.name, self.flow.ref(s.name))
        return vectors

    def aligned(self) -> tuple[list[Ref], Ref]:
        """The aligned path's features (maps per U level, or the sequence) and its vector."""
        al, f = self.specs.aligned, self.flow
        high = al[0].structure == "high"
        maps = []
        for s in al:
            self.add(s.name, "aligned", s.describe(), stem(s, self.cfg, high))
            maps.append(f.child(f"{s.name}_map", s.name, f.ref(s.name)))
        total = maps[0]
        for m in maps[1:]:
            total = f.fn("aligned_map", "operator.add", total, m)
        grid = tuple(int(d) for d in al[0].grid) if high else ()
        self.add("aligned", "shared", "-", u_encoder(grid, self.cfg, self.width) if high
                 else context(self.cfg, self.width))
        out = f.child("aligned_out", "aligned", total)
        n = u_levels(grid) + 1 if high else 1
        return [item(f, f"s{k}" if high else "features", out, k) for k in range(n)], item(f, "aligned_vec", out, n)

    def decoders(self, h: Ref, features: list[Ref]) -> Arg:
        results = []
        for o in self.specs.outputs:
            if o.grid and self.specs.aligned:
                high = self.specs.aligned[0].structure == "high"
                grid = tuple(int(d) for d in o.grid) if high else ()
                built = u_decoder(o, grid, self.cfg, self.width) if high else seq_decoder(o, self.cfg, self.width)
                args = (h, *features)
            else:
                built = fan_out(o, _cfg(o, self.cfg), self.width) if o.structure == "high" else head(o, self.width)
                args = (h,)
            self.add(o.name, "output", o.describe(), built)
            results.append(self.flow.child(o.name, o.name, *args))
        if len(results) == 1:
            return results[0]
        return DictArg(tuple((o.name, r) for o, r in zip(self.specs.outputs, results)))

    def root(self, name: str) -> Block:
        vectors = self.encoders()
        features: list[Ref] = []
        if self.specs.aligned:
            features, vectors["aligned"] = self.aligned()
        self.add("trunk", "shared", "-", _trunk(list(vectors), self.cfg, self.width))
        h = self.flow.child("h", "trunk", *vectors.values())
        output = self.decoders(h, features)
        return Block(ClassRef(MODULE, name), tuple(self.children), self.flow.graph(output))


def _assemble(specs: _Specs, cfg: Config, name: str) -> tuple[Block, list[PlanRow]]:
    a = _Assembly(specs, cfg)
    return a.root(name), a.rows


def _choose(compute: object, build: Callable[[Config], tuple[Block, list[PlanRow]]]
            ) -> tuple[Config, str, Block, list[PlanRow]]:
    """The config ``compute`` names, or the largest model within a parameter budget."""
    if isinstance(compute, str):
        if compute not in CONFIGS:
            raise SpecError(f"universal: compute={compute!r} is not one of {tuple(CONFIGS)} or a parameter budget "
                            "(an int)")
        return (CONFIGS[compute], compute, *build(CONFIGS[compute]))
    if isinstance(compute, bool) or not isinstance(compute, int) or compute <= 0:
        raise SpecError(f"universal: compute={compute!r} must be {tuple(CONFIGS)} or a positive parameter budget")
    best: tuple[int, Config, Block, list[PlanRow]] | None = None
    smallest: tuple[int, Config] | None = None
    for cfg in LADDER:
        root, rows = build(cfg)
        n = sum(r.params for r in rows)
        smallest = (n, cfg) if smallest is None or n < smallest[0] else smallest
        if n <= compute and (best is None or n > best[0]):
            best = (n, cfg, root, rows)
    if best is None:
        assert smallest is not None
        raise SpecError(f"universal: compute={compute:,} parameters is less than the smallest model these specs make "
                        f"({smallest[0]:,} parameters at width {smallest[1].width}, depth {smallest[1].depth}); "
                        "raise the budget, or shrink the specs (fewer channels, smaller vocabularies)")
    return best[1], f"budget {compute:,}", best[2], best[3]


def _weights(typed: Model, specs: _Specs) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The fresh weights with every captured encoder's own weights put in, and their frozen keys."""
    weights = dict(typed.weights)
    frozen: list[str] = []
    for name, enc in specs.encoders.items():
        prefix = f"{name}.backbone."
        for k, v in enc.weights.items():
            old = weights.get(prefix + k)
            if old is None or tuple(old.shape) != tuple(v.shape):
                raise SpecError(f"encoders[{name!r}]: its weight {k!r} has no place of that shape in the model; "
                                "capture the encoder again (its weights do not match its IR)")
            weights[prefix + k] = v
        frozen += [prefix + k for k in enc.frozen]
    return weights, tuple(frozen)


def _prepare(unaligned: Sequence[Input], aligned: Sequence[Input], outputs: Sequence[Output], compute: str | int,
             encoders: Mapping[str, Model] | None, name: str) -> tuple[_Specs, Config, str, Block, list[PlanRow]]:
    if not isinstance(name, str) or not name.isidentifier():
        raise SpecError(f"universal: name {name!r} must be an identifier (it names the emitted class)")
    ins, al, outs, encs = check_specs(unaligned, aligned, outputs, encoders)
    specs = _Specs(ins, al, outs, encs, {n: captured_output(next(s for s in ins if s.name == n), m)
                                         for n, m in encs.items()})
    return (specs, *_choose(compute, lambda c: _assemble(specs, c, name)))


def plan_of(unaligned: Sequence[Input] = (), aligned: Sequence[Input] = (), outputs: Sequence[Output] = (),
            compute: str | int = "small", encoders: Mapping[str, Model] | None = None) -> Plan:
    """The plan ``universal`` would follow for these arguments, without typing or initialising the model
    (cheap: compare compute levels or budgets with it).

    >>> plan_of([Input(("N", 8), name="x")], [], [Output(("N",), vocab=3, name="y")]).params  # doctest: +SKIP
    2537
    """
    _, cfg, label, _, rows = _prepare(unaligned, aligned, outputs, compute, encoders, "Universal")
    return Plan(tuple(rows), label, cfg)


def universal(unaligned: Sequence[Input] = (), aligned: Sequence[Input] = (), outputs: Sequence[Output] = (),
              compute: str | int = "small", encoders: Mapping[str, Model] | None = None, name: str = "Universal",
              seed: int = 0) -> UniversalModel:
    """A typed ``ir.Model`` built from input and output specs (see ``torchgraft.composable``).

    ``unaligned`` inputs are encoded to vectors (fan-in, straight or embedding by their structure) and
    fused by the trunk; ``aligned`` inputs lie on the outputs' grid and are decoded position by position
    (U for high grids, straight for sequences). ``compute`` is ``"small"``, ``"medium"``, ``"high"`` or a
    parameter budget (the largest config whose model fits); an input's or output's own ``compute`` hint
    sizes its unaligned encoder or fan-out decoder (the aligned path shares the model's config).
    ``encoders={"image": captured}`` uses a captured ``ir.Model`` as that input's encoder, its weights
    kept under ``image.backbone``. Weights are initialised from ``seed``. ``model.plan`` tells what was built.

    >>> m = universal([Input(("N", 8), name="x")], [], [Output(("N",), vocab=3, name="y")])  # doctest: +SKIP
    >>> str(m.output_type)                                                                    # doctest: +SKIP
    'f32[N, 3]'
    """
    from torchgraft.hand import build_model

    specs, cfg, label, root, rows = _prepare(unaligned, aligned, outputs, compute, encoders, name)
    inputs = (*specs.unaligned, *specs.aligned)
    typed = build_model(root, *(s.type for s in inputs), name=name, seed=seed)
    weights, frozen = _weights(typed, specs)
    return UniversalModel(name, root, tuple(GraphInput(s.name, s.type) for s in inputs), typed.output_type,
                          typed.types, frozen=frozen, weights=weights, plan=Plan(tuple(rows), label, cfg))

"""``compose``: one model from several captured or hand-built ones (``D(G(z))``, two towers and a head).

Each model's root becomes a named child of a new root, so its state_dict keys gain the
child's name as a prefix (``generator.0.weight``), and everything else it carries (frozen
keys, ties, constants, extra state, helpers, module types) comes along under that prefix::

    gan = torchgraft.compose(G, D, names=("generator", "discriminator"))   # gan(z) == D(G(z))

Models with several inputs or outputs are joined by ``wiring`` (see ``compose``); the new root
is then a Block whose forward is a Graph of calls to the models, written as plain code.
Every seam is type-checked when composing (``seam_problem``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from torchgraft.errors import IRError
from torchgraft.ir.graph import Graph, InputKind
from torchgraft.ir.graph import Input as GraphInput
from torchgraft.ir.model import Helper, Model, merge_helpers
from torchgraft.ir.nodes import Block, Chain
from torchgraft.ir.traverse import join
from torchgraft.ir.types import UNKNOWN, TensorType, ValueType

Outputs = str | Sequence[str] | Mapping[str, str] | None
"""What the composed forward returns: one source, a tuple of sources, or a dict of named sources."""


@dataclass(frozen=True, slots=True)
class Part:
    """One model being composed: its child name, the model, and its forward's inputs.

    ``known`` is False when the model records no signature (a captured ``nn.Sequential``):
    ``inputs`` is then one placeholder ``x`` of unknown type, and seams into it are checked by
    running the model on meta tensors of the incoming type.
    """

    name: str
    model: Model
    inputs: tuple[GraphInput, ...]
    known: bool = True

    def required(self) -> tuple[GraphInput, ...]:
        """The inputs that have no default (and are not ``*args``/``**kwargs``)."""
        return tuple(i for i in self.inputs if i.default is None and i.kind in (InputKind.POSITIONAL,
                                                                                  InputKind.KEYWORD))


def signature(model: Model) -> tuple[tuple[GraphInput, ...], bool]:
    """The forward's inputs of ``model`` (names from its root's Graph when it has one), and whether known."""
    root = model.root
    if isinstance(root, Block) and isinstance(root.body, Graph):
        by_name = {i.name: i.type for i in model.inputs}
        return tuple(i if i.type != UNKNOWN else GraphInput(i.name, by_name.get(i.name, _nth_type(model, k)),
                                                       i.kind, i.default)
                     for k, i in enumerate(root.body.inputs)), True
    if model.inputs:
        return model.inputs, True
    return (GraphInput("x"),), False


def _nth_type(model: Model, k: int) -> ValueType:
    return model.inputs[k].type if k < len(model.inputs) else UNKNOWN


def seam_problem(out: ValueType, need: ValueType) -> str | None:
    """Why a value of type ``out`` cannot feed an input of type ``need`` (None when it can, or is unknown).

    Tensors need equal dtype and rank; fixed dims must be equal; a symbol (``N``) of ``need``
    takes the size ``out`` has there, the same size wherever it appears; a symbol of ``out``
    may meet a fixed size. Devices are not compared (a model moves with ``.to()``).

    >>> seam_problem(TensorType(("N", 16)), TensorType(("B", 12)))
    'dim 1 is 16, the input needs 12'
    """
    if out == UNKNOWN or need == UNKNOWN:
        return None
    if isinstance(out, TensorType) and isinstance(need, TensorType):
        if out.dtype != need.dtype:
            return f"dtype {out.dtype} is not {need.dtype}"
        if out.rank != need.rank:
            return f"rank {out.rank} is not {need.rank}"
        bound: dict[str, int | str] = {}
        for i, (a, b) in enumerate(zip(out.shape, need.shape)):
            if isinstance(b, str):
                if bound.setdefault(b, a) != a:
                    return f"dim {i} is {a}, but symbol {b} is already {bound[b]}"
            elif isinstance(a, int) and a != b:
                return f"dim {i} is {a}, the input needs {b}"
        return None
    if isinstance(out, TensorType) or isinstance(need, TensorType):
        return "a tensor and a non-tensor value do not match"
    return None if out.name == need.name else f"{out.name} is not {need.name}"


def _meta_problem(part: Part, out: ValueType) -> str | None:
    """Why ``part``'s model (signature unknown) fails on a tensor of type ``out`` (None if it runs).

    Run on the meta device (no memory); a model that cannot run there (an op with no meta
    kernel, ``.item()``) is run for real on CPU, freshly built, the global RNG put back afterwards.
    """
    if not isinstance(out, TensorType):
        return None
    from torchgraft.backends.torch.emitter import emit

    shape = [5 if isinstance(d, str) else d for d in out.shape]
    code = emit(part.model)
    for device in ("meta", "cpu"):
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                module = code.materialize(load_weights=False, device=device).eval()
                module(torch.zeros(shape, dtype=getattr(torch, out.dtype), device=device))
        except Exception as e:  # noqa: BLE001 - any failure means the seam does not fit
            if device == "meta" and (isinstance(e, NotImplementedError) or "meta" in str(e)):
                continue  # the meta device cannot say: run it for real
            return f"it fails on such a tensor ({type(e).__name__}: {e})"
        return None
    return None


def check_seam(source: str, out: ValueType, part: Part, inp: GraphInput) -> ValueType:
    """Raise IRError when ``source``'s value (type ``out``) cannot feed input ``inp`` of ``part``; the seam's type."""
    problem = seam_problem(out, inp.type) if part.known else _meta_problem(part, out)
    if problem is not None:
        need = str(inp.type) if part.known else "not recorded (checked by running the model)"
        what = f"input {inp.name!r}" if part.known else "input"
        raise IRError(f"compose: model {part.name!r} {what} cannot take {source}: it gives {out}, "
                      f"the input's type is {need}; {problem}. Make the two models agree at this seam")
    return out if inp.type == UNKNOWN else inp.type


def under(name: str, path: str) -> str:
    """``path`` of a composed model, under its child ``name`` (``""`` is the child itself)."""
    return join(name, path) if path else name


def _prefixed(name: str, mapping: Mapping[str, object]) -> dict[str, object]:
    return {under(name, k): v for k, v in mapping.items()}


def _helpers(parts: Sequence[Part]) -> tuple[Helper, ...]:
    def clash(first: str, other: str, name: str) -> IRError:
        return IRError(f"compose: models {first!r} and {other!r} both carry a helper named {name!r} with different "
                       "code; the emitted file can hold only one. Rename the helper in one model's source and "
                       "capture it again")

    seen = merge_helpers(((p.name, p.model.helpers) for p in parts), clash)
    return tuple(seen[k][0] for k in sorted(seen))


def merged(parts: Sequence[Part], name: str, root: Chain | Block, inputs: tuple[GraphInput, ...],
           output_type: ValueType) -> Model:
    """The composed Model: ``root`` over the parts, their state and records under their names."""
    types: dict[str, ValueType] = {"": output_type}
    weights: dict[str, object] = {}
    constants: dict[str, object] = {}
    extra: dict[str, object] = {}
    ties: list[tuple[str, str]] = []
    frozen: list[str] = []
    for p in parts:
        m = p.model
        types.update({under(p.name, k): t for k, t in m.types})
        types.setdefault(p.name, m.output_type)
        weights.update(_prefixed(p.name, m.weights))
        constants.update(_prefixed(p.name, m.constants))
        extra.update(_prefixed(p.name, m.extra_state))
        ties += [(under(p.name, a), under(p.name, t)) for a, t in m.ties]
        frozen += [under(p.name, k) for k in m.frozen]
    return Model(name, root, inputs, output_type, tuple(sorted(types.items())), tuple(ties), _helpers(parts),
                 tuple(frozen), weights=weights, constants=constants, extra_state=extra)


def _parts(models: Sequence[Model], names: Sequence[str] | None) -> list[Part]:
    if not models:
        raise IRError("compose needs at least one model")
    bad = [type(m).__name__ for m in models if not isinstance(m, Model)]
    if bad:
        raise IRError(f"compose takes ir.Model values (from torchgraft.capture or build_model), got {bad}")
    chosen = tuple(names) if names is not None else tuple(str(i) for i in range(len(models)))
    if isinstance(names, str) or len(chosen) != len(models):
        raise IRError(f"compose: {len(models)} models need {len(models)} names, got {names!r}")
    wrong = [n for n in chosen if not isinstance(n, str) or not n or "." in n]
    if wrong or len(set(chosen)) != len(chosen):
        raise IRError(f"compose: names must be unique, non-empty and without '.', got {list(chosen)}")
    return [Part(n, m, *signature(m)) for n, m in zip(chosen, models)]


def _as_chain(parts: list[Part], name: str) -> Model | None:
    """The composed model as a Chain, when every model takes one value from the previous one.

    Models with ties make a Block root instead: the emitter writes ties in a Block's ``__init__``.
    """
    if any(len(p.required()) > 1 or p.model.ties for p in parts):
        return None
    for prev, part in zip(parts, parts[1:]):
        first = part.inputs[0]
        if first.kind not in (InputKind.POSITIONAL, InputKind.VAR_POSITIONAL) or (
                part.required() and part.required()[0] is not first):
            raise IRError(f"compose: model {part.name!r} does not take its first input {first.name!r} "
                          "positionally, so it cannot follow another in a chain; give wiring=")
        check_seam(f"the output of {prev.name!r}", prev.model.output_type, part, first)
    head = parts[0]
    inputs = head.inputs[:1] if head.known and head.inputs[0].kind is InputKind.POSITIONAL else ()
    root = Chain(*(p.model.root for p in parts), names=tuple(p.name for p in parts))
    return merged(parts, name, root, inputs, parts[-1].model.output_type)


def compose(*models: Model, names: Sequence[str] | None = None, wiring: Mapping[str, str] | None = None,
            outputs: Outputs = None, name: str = "Composed") -> Model:
    """One ``ir.Model`` that runs ``models`` one after another, or as ``wiring`` says.

    Without ``wiring``, model k+1 takes model k's output: ``compose(G, D)(z) == D(G(z))``. Each
    model becomes a child called by its entry in ``names`` (``"0"``, ``"1"``, ... by default), its
    weights, frozen keys, ties, constants, extra state and module types under that prefix
    (``generator.0.weight``); helpers are shared (two different helpers of one name are refused).
    The root is a Chain (emitted as ``nn.Sequential``) when each model takes one value, else a
    Block named ``name`` whose ``forward`` calls the models.

    ``wiring`` maps each model input to where its value comes from. A key is ``"model.input"``
    (or just ``"model"`` for a model with one required input); a value is another model's name
    (its output), ``"model.key"`` (an item of a model's tuple or dict output: ``"enc.0"``), or
    any other name, which becomes an input of the composed forward. ``outputs`` is what the
    forward returns: a source, a tuple of sources, or a dict ``{name: source}``; by default the
    last model's output::

        two_tower = compose(image_tower, label_tower, head,
                            names=("image_tower", "label_tower", "head"),
                            wiring={"image_tower": "image", "label_tower": "label",
                                    "head.a": "image_tower", "head.b": "label_tower"},
                            outputs={"logits": "head", "embedding": "image_tower"})
        # emitted: def forward(self, image, label): ... return {"logits": head, "embedding": image_tower}

    Every seam is type-checked now (``seam_problem``): an ``IRError`` names the receiving model
    and input and both types. A model with no recorded input types (an IR read from JSON without them)
    is checked by running it on meta tensors of the incoming type. Unknown names, cycles,
    unwired inputs and models whose output is never used are refused with the fix.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise IRError(f"compose: name {name!r} must be an identifier (it names the emitted class)")
    parts = _parts(models, names)
    if wiring is None and outputs is None:
        chained = _as_chain(parts, name)
        if chained is not None:
            return chained
    from torchgraft.wiring import wired

    return wired(parts, wiring, outputs, name)


# The composable-model API lives here too: ``from torchgraft.compose import Input, Output, universal``.
from torchgraft.composable import Input, Output, universal  # noqa: E402

__all__ = ["Input", "Output", "compose", "universal"]

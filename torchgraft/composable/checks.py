"""The checks ``universal`` runs on its specs before building: one clear ``SpecError`` per problem.

>>> check_specs([], [], [Output(("N",), vocab=10, name="cls")], None)  # doctest: +SKIP
SpecError: Output 'cls' has no path: the model has no inputs; ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchgraft.composable.spec import Input, Output, Spec, SpecError

RESERVED = ("trunk", "aligned")
"""Names of the shared parts: no input or output may take them."""


def _typed(what: str, items: object, cls: type) -> tuple[Any, ...]:
    if isinstance(items, Spec):
        items = (items,)
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise SpecError(f"universal: {what} must be a list of {cls.__name__} specs, got {type(items).__name__}")
    bad = [type(s).__name__ for s in items if not isinstance(s, cls)]
    if bad:
        raise SpecError(f"universal: {what} must hold {cls.__name__} specs, got {bad}"
                        + ("; outputs are Output(...), inputs Input(...)" if cls in (Input, Output) else ""))
    return tuple(items)


def _names(specs: Sequence[Spec]) -> None:
    seen: dict[str, str] = {}
    for s in specs:
        kind = type(s).__name__
        if s.name in seen:
            raise SpecError(f"universal: the name {s.name!r} is used by two specs ({seen[s.name]} and {kind}); "
                            "names become forward arguments and module names, so make them unique")
        if s.name in RESERVED:
            raise SpecError(f"universal: {kind} {s.name!r} takes the name of a shared part {RESERVED}; rename it "
                            f"(e.g. '{s.name}_in')")
        seen[s.name] = kind


def _batch(specs: Sequence[Spec]) -> None:
    first = specs[0]
    for s in specs[1:]:
        if s.batch != first.batch:
            raise SpecError(f"universal: {type(s).__name__} {s.name!r} has batch dim {s.batch!r} but "
                            f"{type(first).__name__} {first.name!r} has {first.batch!r}; every spec's dim 0 is the "
                            "batch: give them all the same symbol (e.g. 'N')")


def _aligned(aligned: Sequence[Input], outputs: Sequence[Output]) -> None:
    if not aligned:
        return
    first = aligned[0]
    for a in aligned:
        if a.structure == "point":
            raise SpecError(f"universal: aligned Input {a.name!r} is pointwise (no grid), so it cannot be aligned "
                            "with an output grid; pass it in unaligned=[...]")
        if a.grid != first.grid or a.structure != first.structure:
            raise SpecError(f"universal: aligned inputs {first.name!r} (grid {first.grid}, {first.structure}) and "
                            f"{a.name!r} (grid {a.grid}, {a.structure}) differ; aligned inputs share one grid: "
                            "pass one of them in unaligned=[...]")
    if first.structure == "low" and first.spatial_dims != 1:
        raise SpecError(f"universal: aligned Input {first.name!r} has a low-structure grid {first.grid} of "
                        f"{first.spatial_dims} dims; the straight aligned path takes one grid dim (a sequence): "
                        "flatten the grid into one dim, or give structure='high' for a convolutional U path")
    for o in outputs:
        if o.grid and o.grid != first.grid:
            raise SpecError(f"universal: aligned Input {first.name!r} has grid {first.grid} but Output {o.name!r} "
                            f"has grid {o.grid}; an aligned input must lie on the output grid: give the output the "
                            f"grid {first.grid}, or pass {first.name!r} in unaligned=[...]")


def _encoders(encoders: Mapping[str, Any] | None, unaligned: Sequence[Input]) -> dict[str, Any]:
    if encoders is None:
        return {}
    if not isinstance(encoders, Mapping):
        raise SpecError(f"universal: encoders must be a dict {{input name: ir.Model}}, got {type(encoders).__name__}")
    names = [s.name for s in unaligned]
    unknown = [k for k in encoders if k not in names]
    if unknown:
        raise SpecError(f"universal: encoders names {unknown}, which are no unaligned inputs (those are {names}); "
                        "a captured encoder replaces the encoder of an unaligned input")
    return dict(encoders)


def check_specs(unaligned: object, aligned: object, outputs: object,
                encoders: Mapping[str, Any] | None) -> tuple[tuple[Input, ...], tuple[Input, ...],
                                                              tuple[Output, ...], dict[str, Any]]:
    """The specs as tuples, checked together (names, batch dims, paths, aligned grids, encoders)."""
    ins, al = _typed("unaligned", unaligned, Input), _typed("aligned", aligned, Input)
    outs = _typed("outputs", outputs, Output)
    if not outs:
        raise SpecError("universal: no outputs; give outputs=[Output(...), ...]")
    if not ins and not al:
        raise SpecError(f"universal: Output {outs[0].name!r} has no path: the model has no inputs; give "
                        "unaligned=[Input(...)] (or aligned=[...] for inputs on the output grid)")
    for s in (*ins, *al, *outs):
        if s.spatial_dims > 3:
            raise SpecError(f"universal: {type(s).__name__} {s.name!r} has {s.spatial_dims} grid dims {s.grid}; "
                            "the parts are convolutions over 1 to 3 grid dims: fold some dims into the channels")
    _names((*ins, *al, *outs))
    _batch((*ins, *al, *outs))
    _aligned(al, outs)
    for o in outs if not al else ():
        if not all(isinstance(d, int) for d in o.grid):
            raise SpecError(f"universal: Output {o.name!r} has no path: its grid {o.grid} has a variable size, "
                            "which only an aligned input with that grid can give; pass such an input in "
                            "aligned=[...], or give the output fixed sizes")
    return ins, al, outs, _encoders(encoders, ins)

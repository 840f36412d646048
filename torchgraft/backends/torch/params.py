"""Constructor arguments of a generalised class: holes grouped, named, given defaults and types.

Holes whose values agree in every instance (ignoring instances where one is absent)
become one argument: conv2's stride and the downsample conv's stride vary together, so
the class takes one ``stride``. Names come from where the argument is used: the keyword
(``stride``, ``eps``, ``p``) when it is the same everywhere, a channel role (``in_channels``,
``channels``, ``out_channels``) for sizes, else ``<member>_<keyword>``.
"""

from __future__ import annotations

import keyword
import math
from collections import Counter
from dataclasses import dataclass

from torchgraft.backends.torch.ctor import Call, CExpr, Lit, Raw
from torchgraft.backends.torch.unify import Hole, Site

_CHANNELS = frozenset({"in_channels", "out_channels", "num_features", "num_channels", "channels", "in_planes",
                       "inplanes", "planes", "out_planes", "hidden_channels", "squeeze_channels"})
_FEATURES = frozenset({"in_features", "out_features", "features", "hidden_features"})
_DIMS = frozenset({"normalized_shape", "embed_dim", "dim", "hidden_dim", "kdim", "vdim", "d_model", "in_dim",
                   "out_dim"})
SIZES = _CHANNELS | _FEATURES | _DIMS


@dataclass
class ParamSpec:
    """One constructor argument: its name, value per instance, default (None: required) and type."""

    name: str
    values: list[CExpr]
    default: CExpr | None
    annotation: str
    holes: list[int]
    flag: str | None = None


def _compatible(a: list[CExpr | None], b: list[CExpr | None]) -> bool:
    return all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def _related(a: set[str], b: set[str]) -> bool:
    """Whether values used as ``a`` and as ``b`` may be one argument when they agree: the same
    keyword, or sizes (channel counts, dims) on both sides; a shape dim or ``groups`` goes with any."""
    a, b = a - _NEUTRAL, b - _NEUTRAL
    return not a or not b or bool(a & b) or (a <= SIZES and b <= SIZES)


def _group(holes: list[Hole]) -> list[list[int]]:
    """Hole indices grouped into arguments (literal holes that vary together share one)."""
    groups: list[list[int]] = []
    vectors: list[list[CExpr | None]] = []
    for i, h in enumerate(holes):
        target = None
        if h.alone:
            pass
        elif h.flag is not None:
            target = next((g for g, grp in enumerate(groups) if holes[grp[0]].flag is not None
                           and vectors[g] == h.values), None)
        elif h.literal:
            names = {a for _, a in h.sites}
            candidates = [g for g, grp in enumerate(groups)
                          if holes[grp[0]].literal and holes[grp[0]].flag is None and not holes[grp[0]].alone
                          and _compatible(vectors[g], h.values)
                          and _related(names, {a for j in grp for _, a in holes[j].sites})]
            same = [g for g in candidates if names & {a for j in groups[g] for _, a in holes[j].sites}]
            target = (same or candidates)[0] if same or candidates else None
        if target is None:
            groups.append([i])
            vectors.append(list(h.values))
        else:
            groups[target].append(i)
            vectors[target] = [x if x is not None else y for x, y in zip(vectors[target], h.values, strict=True)]
    return groups


_NEUTRAL = frozenset({"groups", "size"})


def _is_size(sites: list[Site]) -> bool:
    names = {a for _, a in sites} - _NEUTRAL
    return bool(names) and names <= SIZES


def _candidates(sites: list[Site], flag: str | None) -> list[str]:
    """Names to try for an argument, best first."""
    if flag is not None:
        return [flag]
    names = list(dict.fromkeys(a for _, a in sites if a not in _NEUTRAL)) or [sites[0][1]]
    member, first = sites[0]
    out = []
    if len(names) == 1:
        out.append(names[0])
    elif _is_size(sites):
        term = "dim" if _DIMS & set(names) else "channels" if _CHANNELS & set(names) else "features"
        has_in, has_out = any(n.startswith("in") for n in names), any(n.startswith("out") for n in names)
        if has_in != has_out:
            out.append(f"in_{term}" if has_in else f"out_{term}")
        else:
            out += [term, f"hidden_{term}"]
    return out + ([member] if first == member else [f"{member}_{first}", f"{member}_{first}_arg"])


def _annotation(values: list[CExpr], default: CExpr | None) -> str:
    if all(isinstance(v, Raw) for v in values):
        return "type[nn.Module]"
    if all(isinstance(v, Raw) or v == Lit(None) for v in values) and default == Lit(None):
        return "type[nn.Module] | None"  # an optional layer's class (None: no such layer)
    if not all(isinstance(v, Lit) for v in values):
        return "nn.Module | None" if default == Lit(None) else "nn.Module"
    kinds = {type(v.value).__name__ for v in values if isinstance(v, Lit)}  # type: ignore[union-attr]
    if isinstance(default, Lit):
        kinds.add(type(default.value).__name__)
    none = "NoneType" in kinds
    kinds.discard("NoneType")
    if kinds <= {"int", "float"} and kinds:
        base = "float" if "float" in kinds else "int"
    elif len(kinds) == 1 and kinds <= {"bool", "str"}:
        base = kinds.pop()
    elif kinds == {"tuple"}:
        ints = all(isinstance(v.value, tuple) and all(type(x) is int for x in v.value)
                   for v in values if isinstance(v, Lit) and v.value is not None)
        base = "tuple[int, ...]" if ints else "tuple"
    else:
        return ""
    return f"{base} | None" if none else base


def _default(h: list[CExpr | None], flag: str | None, size: bool) -> CExpr | None:
    if flag is not None:
        return Lit(False)
    present = [v for v in h if v is not None]
    if len(present) < len(h):
        return Lit(None)
    if not all(isinstance(v, (Lit, Raw)) for v in present):
        return None
    mode, count = Counter(present).most_common(1)[0]
    if not size and 2 * count > len(h) and (isinstance(mode, Raw) or _plain(mode.value)):  # type: ignore[union-attr]
        return mode
    return None


def _plain(v: object) -> bool:
    """True for values fine as a default: immutable literals written without a call."""
    if isinstance(v, tuple):
        return all(_plain(x) for x in v)
    if isinstance(v, float):
        return math.isfinite(v)
    return v is None or isinstance(v, (bool, int, str))


def build_params(holes: list[Hole], taken: set[str]) -> tuple[list[ParamSpec], dict[int, int]]:
    """The arguments for ``holes`` (required first) and, per hole, the index of its argument."""
    specs: list[ParamSpec] = []
    for grp in _group(holes):
        vector: list[CExpr | None] = [None] * len(holes[grp[0]].values)
        for j in grp:
            vector = [x if x is not None else y for x, y in zip(vector, holes[j].values, strict=True)]
        sites = [s for j in grp for s in holes[j].sites]
        flag = holes[grp[0]].flag
        default = _default(vector, flag, _is_size(sites))
        name = next((c for c in _candidates(sites, flag) if _usable(c, taken)), None)
        if name is None:
            name = _fresh(sites[0][1] if _usable(sites[0][1], set()) else "arg", taken)
        taken.add(name)
        values = [v if v is not None else default for v in vector]
        specs.append(ParamSpec(name, values, default, _annotation(values, default), grp, flag))  # type: ignore[arg-type]
    specs.sort(key=lambda s: (s.default is not None, min(s.holes)))
    index = {j: k for k, s in enumerate(specs) for j in s.holes}
    return specs, index


def _usable(name: str, taken: set[str]) -> bool:
    return name.isidentifier() and name.isascii() and not keyword.iskeyword(name) and name not in taken


def _fresh(base: str, taken: set[str]) -> str:
    i = 2
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


def instance_call(head: str, specs: list[ParamSpec], k: int) -> Call:
    """The constructor call building instance ``k``: required arguments positional, the rest by keyword."""
    req = [s for s in specs if s.default is None]
    opt = [s for s in specs if s.default is not None]
    return Call(head, tuple(s.values[k] for s in req), tuple((s.name, s.values[k]) for s in opt),
                tuple(s.name for s in req), tuple((s.name, s.default) for s in opt))  # type: ignore[misc]

"""Anti-unification: what the instances of one class have in common, and what becomes an argument.

The constructor expressions of all instances are compared position by position. Where
they agree the code stays literal; where literals differ a ``Hole`` records the values
(one per instance, None where an instance lacks the position because it lacks an
optional member) and the places it occurs (``sites``: member and argument name). Holes
whose values vary together become one constructor argument (``params.py`` names them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torchgraft.backends.torch.ctor import Call, CExpr, Guarded, Items, Lit, Param, Raw
from torchgraft.ir.primitives import primitive_class_for

Site = tuple[str, str]
"""(member, argument name): where a hole occurs, e.g. ``("conv2", "stride")``."""


@dataclass
class Hole:
    """One generalised position: its value in each instance (None: absent there) and its sites."""

    values: list[CExpr | None]
    sites: list[Site]
    flag: str | None = None
    alone: bool = False
    """Never one argument with another hole (it guards an optional layer: None means absent)."""

    @property
    def literal(self) -> bool:
        """True when every present value is a literal or a class (may be shared; a module may not)."""
        return all(isinstance(v, (Lit, Raw)) for v in self.values if v is not None)

    @property
    def partial(self) -> bool:
        """True when some instance lacks this position."""
        return any(v is None for v in self.values)


@dataclass
class Unifier:
    """Collects the holes found while unifying the members of a group of instances."""

    size: int
    holes: list[Hole] = field(default_factory=list)

    def hole(self, values: list[CExpr | None], site: Site, flag: str | None = None) -> Param:
        """A new hole with these per-instance values."""
        self.holes.append(Hole(list(values), [site], flag))
        return Param(len(self.holes) - 1)

    def unify(self, exprs: list[CExpr | None], site: Site) -> CExpr:
        """The common generalisation of ``exprs`` (None entries are instances lacking it)."""
        present = [e for e in exprs if e is not None]
        first = present[0]
        if all(e == first for e in present):
            return first
        if all(isinstance(e, Call) for e in present):
            call = self._calls(exprs, site)  # type: ignore[arg-type]
            if call is not None:
                return call
        if all(isinstance(e, Items) for e in present):
            items = self._items(exprs, site)  # type: ignore[arg-type]
            if items is not None:
                return items
        return self.hole(exprs, site)

    def _calls(self, exprs: list[Call | None], site: Site) -> Call | None:
        present = [e for e in exprs if e is not None]
        first = present[0]
        if any(len(e.args) != len(first.args) for e in present):
            return None
        head: str | Param = first.head
        if any(e.head != first.head for e in present):
            if not all(_torch_layer(e.head) for e in present) or not _one_family(present):
                return None
            if len({frozenset(k for k, _ in e.kwargs) for e in present}) > 1:
                return None  # a keyword one class takes may be unknown to another (LeakyReLU's negative_slope)
            heads: list[CExpr | None] = [None if e is None else Raw(str(e.head)) for e in exprs]
            head = self.hole(heads, (site[0], layer_role(present)))
        defaults = dict(first.defaults)
        order = {k: i for i, (k, _) in enumerate(first.defaults)}
        seen = list(dict.fromkeys(k for e in present for k, _ in e.kwargs))
        keys = sorted(seen, key=lambda k: (order.get(k, -1), seen.index(k)))
        filled: list[dict[str, CExpr] | None] = []
        for e in exprs:
            if e is None:
                filled.append(None)
                continue
            kw = dict(e.kwargs)
            if any(k not in kw and k not in defaults for k in keys):
                return None
            filled.append({k: kw.get(k, defaults.get(k)) for k in keys})  # type: ignore[misc]
        names = first.arg_names
        args = tuple(self.unify([None if e is None else e.args[i] for e in exprs],
                                (site[0], names[i] if i < len(names) else site[1]))
                     for i in range(len(first.args)))
        kwargs = tuple((k, self.unify([None if f is None else f[k] for f in filled], (site[0], k))) for k in keys)
        return Call(head, args, kwargs, names, first.defaults)

    def _items(self, exprs: list[Items | None], site: Site) -> Items | None:
        present = [e for e in exprs if e is not None]
        first = max(present, key=lambda e: len(e.items))
        if any(e.kind != first.kind for e in present):
            return None
        if all(e.keys == first.keys for e in present):
            items = tuple(self.unify([None if e is None else e.items[i] for e in exprs], site)
                          for i in range(len(first.items)))
            return Items(first.kind, first.keys, items)
        if not all(_numbered(e) for e in present) or first.kind == "ModuleDict":
            return None
        if any(not e.items for e in present):  # empty in some instances: all items or none
            return self._all_or_none(exprs, site)
        matches = [None if e is None else align(e.items, first.items) for e in exprs]
        if any(m is None for e, m in zip(exprs, matches, strict=True) if e is not None):
            return None
        out: list[CExpr] = []
        for p in range(len(first.items)):
            got: list[CExpr | None] = [None if e is None or m is None or p not in m else e.items[m[p]]
                                       for e, m in zip(exprs, matches, strict=True)]
            item = self.unify(got, site)
            layer = self._optional_layer(item, got, site)
            if layer is not None:
                item = layer
            elif any(g is None for e, g in zip(exprs, got, strict=True) if e is not None):
                flags: list[CExpr | None] = [None if e is None else Lit(g is not None)
                                             for e, g in zip(exprs, got, strict=True)]
                item = Guarded(self.hole(flags, site, flag=_flag_name(item, site, p)).index, item)
            out.append(item)
        return Items(first.kind, tuple(str(i) for i in range(len(out))), tuple(out))


    def _all_or_none(self, exprs: list[Items | None], site: Site) -> Items | None:
        """``nn.Sequential(*([a, b, c] if use_branch1 else []))`` for a container some instances leave empty."""
        full: list[CExpr | None] = [e if e is not None and e.items else None for e in exprs]
        inner = self.unify(full, site)
        if not isinstance(inner, Items) or not _numbered(inner):
            return None
        flags: list[CExpr | None] = [None if e is None else Lit(bool(e.items)) for e in exprs]
        flag = self.hole(flags, site, flag=f"use_{site[0]}" if site[0].isidentifier() else "use_items")
        return Items(inner.kind, ("0",), (Guarded(flag.index, Items("list", inner.keys, inner.items)),))

    def _optional_layer(self, item: CExpr, got: list[CExpr | None], site: Site) -> Guarded | None:
        """A torch layer only some instances have, guarded by its class argument: ``activation_layer``
        is None exactly where the layer is absent (the argument is never shared with another hole)."""
        if not any(g is None for g in got) or not isinstance(item, Call):
            return None
        if isinstance(item.head, Param):  # instances build different layers: the head is a hole already
            hole = self.holes[item.head.index]
            if [v is None for v in hole.values] != [g is None for g in got]:
                return None
            hole.alone = True
            return Guarded(item.head.index, item, when_set=True)
        if not _torch_layer(item.head) or primitive_class_for(item.head[3:]).__name__ != "Activation":
            return None
        heads: list[CExpr | None] = [None if g is None else Raw(item.head) for g in got]
        head = self.hole(heads, (site[0], layer_role([item])))
        self.holes[-1].alone = True
        return Guarded(head.index, Call(head, item.args, item.kwargs, item.arg_names, item.defaults), when_set=True)


def _torch_layer(head: str | Param) -> bool:
    return isinstance(head, str) and head.startswith("nn.") and head[3:].isidentifier()


def _one_family(calls: list[Call]) -> bool:
    """Layer classes one constructor parameter may stand for: one primitive family, the same positional
    parameters (``nn.ReLU``/``nn.GELU``, ``nn.BatchNorm2d``/``nn.BatchNorm1d``; never a BatchNorm and a Dropout)."""
    kinds = {primitive_class_for(str(c.head)[3:]) for c in calls}
    return len(kinds) == 1 and len({c.arg_names for c in calls}) == 1


def layer_role(calls: list[Call]) -> str:
    """``activation_layer``, ``norm_layer``... for a constructor argument that is a torch layer class."""
    kinds = {primitive_class_for(str(c.head)[3:]).__name__ for c in calls}
    role = {"Activation": "activation", "BatchNorm": "norm", "LayerNorm": "norm", "GroupNorm": "norm",
            "Conv": "conv", "Dropout": "dropout"}.get(kinds.pop() if len(kinds) == 1 else "", "")
    return f"{role}_layer" if role else "layer"


def _numbered(e: Items) -> bool:
    return list(e.keys) == [str(i) for i in range(len(e.items))]


_FLAG_WIDTH = 22


def _flag_name(item: CExpr, site: Site, index: int) -> str:
    head = item.head if isinstance(item, Call) else None
    if isinstance(head, str) and head.isidentifier():  # a class of the model: use_squeeze_excitation
        name = "use_" + re.sub(r"(?<!^)(?=[A-Z])", "_", head).lower()
        if len(name) <= _FLAG_WIDTH:  # longer (use_conv2d_norm_activation) crowds every call site
            return name
    return f"use_{site[0]}_{index}" if site[0].isidentifier() else f"use_item_{index}"


def similarity(a: CExpr, b: CExpr) -> int | None:
    """How alike two expressions are (equal literals in the same places), None if they cannot unify."""
    if a == b:
        return 1 + _size(a)
    if isinstance(a, (Lit, Raw)) and isinstance(b, (Lit, Raw)):  # literals and layer classes: a hole
        return 0
    heads_ok = isinstance(a, Call) and isinstance(b, Call) and (a.head == b.head or _torch_layer(a.head)
                                                                  and _torch_layer(b.head))
    if heads_ok and isinstance(a, Call) and isinstance(b, Call) and len(a.args) == len(b.args):
        kb = dict(b.kwargs)
        parts = [similarity(x, y) for x, y in zip(a.args, b.args, strict=True)]
        parts += [similarity(v, kb[k]) for k, v in a.kwargs if k in kb]
        shared = sum(k in kb for k, _ in a.kwargs) - sum(k not in kb for k, _ in a.kwargs)
        return None if any(p is None for p in parts) else 1 + shared + sum(p for p in parts if p)
    if isinstance(a, Items) and isinstance(b, Items) and a.kind == b.kind and len(a.items) == len(b.items):
        parts = [similarity(x, y) for x, y in zip(a.items, b.items, strict=True)]
        return None if any(p is None for p in parts) else 1 + sum(p for p in parts if p)
    return None


def _size(e: CExpr) -> int:
    if isinstance(e, Call):
        return 1 + sum(_size(a) for a in e.args) + sum(_size(v) for _, v in e.kwargs)
    if isinstance(e, Items):
        return 1 + sum(_size(i) for i in e.items)
    return 1


def align(short: tuple[CExpr, ...], long: tuple[CExpr, ...]) -> dict[int, int] | None:
    """Map positions of ``long`` to positions of ``short`` (an order-keeping, most-alike matching of
    every item of ``short``), or None when ``short`` does not fit into ``long``."""
    m, n = len(short), len(long)
    neg = float("-inf")
    best = [[0.0] * (n + 1)] + [[neg] * (n + 1) for _ in range(m)]
    for i in range(1, m + 1):
        for j in range(i, n + 1):
            sim = similarity(short[i - 1], long[j - 1])
            take = best[i - 1][j - 1] + sim if sim is not None else neg
            best[i][j] = max(best[i][j - 1], take)
    if best[m][n] == neg:
        return None
    out: dict[int, int] = {}
    i, j = m, n
    while i > 0:
        if best[i][j] == best[i][j - 1] and j > i:
            j -= 1
            continue
        out[j - 1] = i - 1
        i, j = i - 1, j - 1
    return out

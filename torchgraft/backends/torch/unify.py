"""Anti-unification: what the instances of one class have in common, and what becomes an argument.

The constructor expressions of all instances are compared position by position. Where
they agree the code stays literal; where literals differ a ``Hole`` records the values
(one per instance, None where an instance lacks the position because it lacks an
optional member) and the places it occurs (``sites``: member and argument name). Holes
whose values vary together become one constructor argument (``params.py`` names them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchgraft.backends.torch.ctor import CExpr, Call, Items, Lit, Param

Site = tuple[str, str]
"""(member, argument name): where a hole occurs, e.g. ``("conv2", "stride")``."""


@dataclass
class Hole:
    """One generalised position: its value in each instance (None: absent there) and its sites."""

    values: list[CExpr | None]
    sites: list[Site]
    flag: str | None = None

    @property
    def literal(self) -> bool:
        """True when every present value is a literal (a module-valued hole is False)."""
        return all(isinstance(v, Lit) for v in self.values if v is not None)

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
        if any(e.head != first.head or len(e.args) != len(first.args) for e in present):
            return None
        defaults = dict(first.defaults)
        keys = list(dict.fromkeys(k for e in present for k, _ in e.kwargs))
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
        return Call(first.head, args, kwargs, names, first.defaults)

    def _items(self, exprs: list[Items | None], site: Site) -> Items | None:
        present = [e for e in exprs if e is not None]
        first = present[0]
        if any(e.kind != first.kind or e.keys != first.keys for e in present):
            return None
        items = tuple(self.unify([None if e is None else e.items[i] for e in exprs], site)
                      for i in range(len(first.items)))
        return Items(first.kind, first.keys, items)


def substitute(e: CExpr, table: dict[int, CExpr]) -> CExpr:
    """``e`` with every ``Param(i)`` replaced by ``table[i]`` (used to renumber holes into params)."""
    if isinstance(e, Param):
        return table.get(e.index, e)
    if isinstance(e, Call):
        return Call(e.head, tuple(substitute(a, table) for a in e.args),
                    tuple((k, substitute(v, table)) for k, v in e.kwargs), e.arg_names, e.defaults)
    if isinstance(e, Items):
        return Items(e.kind, e.keys, tuple(substitute(i, table) for i in e.items))
    return e

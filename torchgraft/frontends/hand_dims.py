"""Symbolic dims derived from runs at several trial sizes (``retype_dims``: retype, and so hand-built models).

Each symbol of the input types (``"N"``, ``"T"``) is given distinct prime trial sizes that
no fixed input dim uses. The model runs once at the base sizes, once more per symbol with
only that symbol changed, and once with every symbol changed (which tells ``N+T`` from
``N*T`` and checks the fit). A dim that is equal in every run is that int; one that follows
``c0 + c1*S1 + ...`` (integer coefficients) or ``c*Si*Sj`` is written as that expression
(``"N*4"``, ``"T-1"``, ``"N*T"``); anything else is refused.

>>> plan = TrialPlan.for_symbols(("N",), fixed={3, 32})
>>> plan.runs
({'N': 11}, {'N': 13}, {'N': 17})
>>> plan.dim((44, 52, 68), "0")
'N*4'
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from torchgraft.errors import IRError
from torchgraft.ir.types import Dim, ScalarType, TensorType, ValueType

_PRIMES = (11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109,
           113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191, 193, 197, 199)


def where(path: str) -> str:
    """A module path as messages show it (the root is ``<root>``)."""
    return repr(path) if path else "<root>"


def _term(coef: int, body: str, first: bool) -> str:
    """``body`` times ``coef`` as one summand: ``N``, ``N*4``, ``-N``, ``+N*4``, ``-N*4``."""
    text = body if abs(coef) == 1 else f"{body}*{abs(coef)}"
    if coef < 0:
        return f"-{text}"
    return text if first else f"+{text}"


def linear_expr(coefs: Sequence[tuple[str, int]], const: int) -> Dim:
    """``const + sum(c*S)`` written as a dim: an int when no symbol is left, else ``"N*4+1"``-style text.

    >>> linear_expr((("N", 4),), 0), linear_expr((("T", 1),), -1), linear_expr((("N", 0),), 7)
    ('N*4', 'T-1', 7)
    """
    parts = [(s, c) for s, c in coefs if c]
    if not parts:
        return const
    text = "".join(_term(c, s, i == 0) for i, (s, c) in enumerate(parts))
    if const:
        text += f"+{const}" if const > 0 else f"-{-const}"
    return text


@dataclass(frozen=True, slots=True)
class TrialPlan:
    """The symbols and the size each gets in every run (base, one per symbol, all changed)."""

    symbols: tuple[str, ...]
    runs: tuple[dict[str, int], ...]

    @classmethod
    def for_symbols(cls, symbols: Sequence[str], fixed: set[int]) -> TrialPlan:
        """Distinct prime trial sizes for ``symbols``, none equal to a ``fixed`` size of the inputs."""
        free = [p for p in _PRIMES if p not in fixed]
        if len(free) < 3 * len(symbols):
            raise IRError(f"too many symbolic dims ({len(symbols)}); fix some of them to sizes")
        base = dict(zip(symbols, free[0::3]))
        runs = [base] + [base | {s: free[3 * i + 1]} for i, s in enumerate(symbols)]
        if symbols:
            runs.append({s: free[3 * i + 2] for i, s in enumerate(symbols)})
        return cls(tuple(symbols), tuple(runs))

    def sizes(self, run: int) -> str:
        """``N=11, T=13`` for messages."""
        return ", ".join(f"{s}={v}" for s, v in self.runs[run].items())

    def dim(self, values: Sequence[int], path: str, what: str = "a dim") -> Dim:
        """The dim that takes ``values`` in the runs: an int, or an expression of the symbols."""
        if all(v == values[0] for v in values):
            return values[0]
        linear = self._linear(values)
        if linear is not None:
            return linear
        for a, b in itertools.combinations_with_replacement(self.symbols, 2):  # N*T, and N*N
            coef, rest = divmod(values[0], self.runs[0][a] * self.runs[0][b])
            if not rest and coef > 0 and all(v == coef * r[a] * r[b] for v, r in zip(values, self.runs)):
                return f"{a}*{b}" if coef == 1 else f"{a}*{b}*{coef}"
        seen = "; ".join(f"{v} at {self.sizes(i)}" for i, v in enumerate(values))
        product = f", nor c*{self.symbols[0]}*{self.symbols[-1]}"
        raise IRError(f"{where(path)}: {what} of the output is {seen}: not c0 + c1*{self.symbols[0]} + ... with "
                      f"integer coefficients{product}, so it has no symbolic type (a stride or pooling on a symbolic "
                      "size?); fix that input dim to a size")

    def _linear(self, values: Sequence[int]) -> Dim | None:
        base = self.runs[0]
        coefs: list[tuple[str, int]] = []
        for i, s in enumerate(self.symbols):
            coef, rest = divmod(values[i + 1] - values[0], self.runs[i + 1][s] - base[s])
            if rest:
                return None
            coefs.append((s, coef))
        const = values[0] - sum(c * base[s] for s, c in coefs)
        if any(v != const + sum(c * r[s] for s, c in coefs) for v, r in zip(values, self.runs)):
            return None
        return linear_expr(coefs, const)

    def merge(self, types: Sequence[ValueType], path: str, device: str) -> ValueType:
        """One type from a value's types in every run: symbolic dims, the real ``device``."""
        first = types[0]
        if all(isinstance(t, TensorType) for t in types):
            ts = [t for t in types if isinstance(t, TensorType)]
            if any((t.rank, t.dtype) != (ts[0].rank, ts[0].dtype) for t in ts):
                raise IRError(f"{where(path)}: the output's rank or dtype changes with the trial sizes "
                              f"({', '.join(map(str, ts))}); hand-built types need one rank and dtype")
            if any(isinstance(d, str) for t in ts for d in t.shape):
                return ts[0]  # already symbolic (a type read off a non-tensor): nothing to derive
            dims = tuple(self.dim([int(t.shape[i]) for t in ts], path, f"dim {i}") for i in range(ts[0].rank))
            return TensorType(dims, ts[0].dtype, device)
        if all(isinstance(t, ScalarType) for t in types):
            ss = [t for t in types if isinstance(t, ScalarType)]
            if any((t.name, len(t.items)) != (ss[0].name, len(ss[0].items)) for t in ss):
                raise IRError(f"{where(path)}: the output's structure changes with the trial sizes "
                              f"({', '.join(map(str, ss))}); return the same structure for every size")
            items = tuple(self.merge([t.items[i] for t in ss], path, device) for i in range(len(ss[0].items)))
            return ScalarType(ss[0].name, items)
        raise IRError(f"{where(path)}: the output changes kind with the trial sizes ({first} and others)")

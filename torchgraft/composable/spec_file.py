"""A composable model described by a small TOML file: what ``torchgraft new SPEC.toml -o DIR`` reads.

The file mirrors ``universal(...)``: the top level gives ``name`` (the emitted class, default
``"Universal"``), ``compute`` (``"small"``, ``"medium"``, ``"high"`` or an integer parameter budget;
default ``"small"``) and ``seed`` (default 0); each input is an ``[[unaligned]]`` or ``[[aligned]]``
table and each output an ``[[outputs]]`` table, with the keywords of ``Input``/``Output``: ``name``
and ``shape`` (required), ``dtype``, ``vocab``, ``compute``, ``structure``::

    name = "AnimalSound"
    compute = "medium"
    [[unaligned]]
    name = "image"
    shape = ["N", 3, 64, 64]
    [[outputs]]
    name = "sound"
    shape = ["N", 1, 4096]

The file is only parsed as data (``tomllib``), never run. Every mistake (an unknown key, a value of
the wrong type, a missing ``name`` or ``shape``, a spec ``universal`` refuses) is one
``SpecFileError`` naming the file, the table entry, the key and the fix. ``EXAMPLE`` is the bundled
``torchgraft/examples/animal_sound.toml``.

>>> spec = read_spec(EXAMPLE)
>>> [s.name for s in spec.unaligned], spec.compute
(['image', 'text', 'label'], 'medium')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchgraft.composable.plan import Plan
from torchgraft.composable.spec import Input, Output, SpecError
from torchgraft.composable.universal import UniversalModel, plan_of, universal

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "animal_sound.toml"
"""The bundled example spec file: image + text + label -> sound."""

TABLES = ("unaligned", "aligned", "outputs")
_TOP = {"name": ("a string such as \"AnimalSound\" (the emitted class)", (str,)),
        "compute": ("\"small\", \"medium\", \"high\" or an integer parameter budget such as 500000", (str, int)),
        "seed": ("an integer such as 0", (int,))}
_ENTRY = {"name": ("a string such as \"image\" (the forward argument)", (str,)),
          "shape": ("an array of sizes and symbols such as [\"N\", 3, 64, 64] (batch dim first)", (list,)),
          "dtype": ("a string such as \"float32\" or \"int64\"", (str,)),
          "vocab": ("an integer such as 1000 (the number of token values)", (int,)),
          "compute": ("a string: \"small\", \"medium\", \"high\" (or \"dense\" for a low input)", (str,)),
          "structure": ("a string: \"point\", \"low\" or \"high\"", (str,))}
_REQUIRED = {"name": 'name = "image"', "shape": 'shape = ["N", 3, 64, 64]'}


class SpecFileError(SpecError):
    """A spec file cannot make a model; the message names the file, the entry, the key and the fix."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The arguments of ``universal`` a spec file gives; ``source`` (the file) prefixes every error.

    >>> ModelSpec((Input(("N", 8), name="x"),), (), (Output(("N",), vocab=3, name="y"),)).build().name
    'Universal'
    """

    unaligned: tuple[Input, ...]
    aligned: tuple[Input, ...]
    outputs: tuple[Output, ...]
    name: str = "Universal"
    compute: str | int = "small"
    seed: int = 0
    source: str = "<spec>"

    def __post_init__(self) -> None:
        for table, kind in (("unaligned", Input), ("aligned", Input), ("outputs", Output)):
            items = tuple(getattr(self, table))
            if not all(isinstance(s, kind) for s in items):
                raise SpecFileError(f"{self.source}: {table} must hold {kind.__name__} specs, got {items!r}")
            object.__setattr__(self, table, items)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpecFileError(f"{self.source}: the top level: key 'seed' must be an integer >= 0, "
                                f"got {self.seed!r}; e.g. seed = 0")

    def build(self) -> UniversalModel:
        """``universal(...)`` with these arguments (a refusal names the file)."""
        try:
            return universal(self.unaligned, self.aligned, self.outputs, self.compute, name=self.name,
                             seed=self.seed)
        except SpecFileError:
            raise
        except SpecError as e:
            raise SpecFileError(f"{self.source}: {e}") from None

    def plan(self) -> Plan:
        """``plan_of(...)``: what ``build`` makes, without making it."""
        try:
            return plan_of(self.unaligned, self.aligned, self.outputs, self.compute)
        except SpecError as e:
            raise SpecFileError(f"{self.source}: {e}") from None

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """One tensor per forward argument, in order: batch 2, every other symbolic dim 8, token ids below ``vocab``.

        >>> [tuple(x.shape) for x in read_spec(EXAMPLE).example_inputs()]
        [(2, 3, 64, 64), (2, 8), (2,)]
        """
        g = torch.Generator().manual_seed(self.seed)
        batches = {s.batch for s in (*self.unaligned, *self.aligned) if isinstance(s.batch, str)}
        out = []
        for s in (*self.unaligned, *self.aligned):
            shape = [d if isinstance(d, int) else (2 if d in batches else 8) for d in s.shape]
            if s.discrete:
                out.append(torch.randint(0, int(s.vocab or 2), shape, generator=g, dtype=getattr(torch, s.dtype)))
            else:
                out.append(torch.randn(shape, generator=g).to(getattr(torch, s.dtype)))
        return tuple(out)


def _toml_type(value: object) -> str:
    names = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
             (dict, "a table"))
    return next((n for t, n in names if isinstance(value, t)), "a date/time")


def _check_keys(where: str, table: Mapping[str, Any], allowed: Mapping[str, Any], required: tuple[str, ...]) -> None:
    for key, value in table.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpecFileError(f"{where}: unknown key {key!r}; {hint}the keys here are {', '.join(allowed)}")
        what, types = allowed[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SpecFileError(f"{where}: key {key!r} must be {what}, got {_toml_type(value)} ({value!r})")
    for key in required:
        if key not in table:
            raise SpecFileError(f"{where}: missing key {key!r}; add {_REQUIRED[key]} to it")


def _entry(source: str, table: str, i: int, raw: object) -> Input | Output:
    where = f"{source}: [[{table}]] entry {i}"
    if not isinstance(raw, dict):
        raise SpecFileError(f"{where} must be a table of keys, got {_toml_type(raw)} ({raw!r}); write "
                            f"[[{table}]] on its own line, then name = ..., shape = [...] below it")
    if isinstance(raw.get("name"), str):
        where += f" ({raw['name']!r})"
    _check_keys(where, raw, _ENTRY, tuple(_REQUIRED))
    kind = Output if table == "outputs" else Input
    try:
        return kind(**raw)
    except SpecError as e:  # "Input 'x': dim 1 is 0; ..." -> "<file>: [[unaligned]] entry 1 ('x'): dim 1 is 0; ..."
        text = str(e).removeprefix(f"{kind.__name__} {raw['name']!r}: ")
        raise SpecFileError(f"{where}: {text}") from None


def _entries(source: str, data: Mapping[str, Any], table: str) -> tuple[Any, ...]:
    raw = data.get(table, [])
    if not isinstance(raw, list):
        raise SpecFileError(f"{source}: key {table!r} must be an array of tables, got {_toml_type(raw)}; write "
                            f"[[{table}]] (double brackets) above each entry's keys")
    return tuple(_entry(source, table, i, item) for i, item in enumerate(raw, 1))


def spec_from_dict(data: Mapping[str, Any], source: str = "<spec>") -> ModelSpec:
    """A ``ModelSpec`` from parsed TOML (a dict of plain values), checked key by key.

    >>> spec_from_dict({"unaligned": [{"name": "x", "shape": ["N", 8]}],
    ...                 "outputs": [{"name": "y", "shape": ["N"], "vocab": 3}]}).outputs[0].vocab
    3
    """
    top = {**_TOP, **{t: ("an array of tables", (list,)) for t in TABLES}}
    where = f"{source}: the top level"
    _check_keys(where, {k: v for k, v in data.items() if k not in TABLES}, top, ())
    unaligned, aligned, outputs = (_entries(source, data, t) for t in TABLES)
    if not outputs:
        raise SpecFileError(f"{source}: no [[outputs]]; add one table per output: [[outputs]], then "
                            'name = "sound" and shape = ["N", 1, 4096] below it')
    compute = data.get("compute", "small")
    if isinstance(compute, int) and compute <= 0:
        raise SpecFileError(f"{where}: key 'compute' is {compute}; a parameter budget must be positive")
    name = data.get("name", "Universal")
    if not name.isidentifier():
        raise SpecFileError(f"{where}: key 'name' is {name!r}, which is not a Python identifier; it names the "
                            "emitted class, so use letters, digits and '_' (e.g. \"AnimalSound\")")
    return ModelSpec(unaligned, aligned, outputs, name, compute, data.get("seed", 0), source)


def parse_spec(text: str, source: str = "<spec>") -> ModelSpec:
    """A ``ModelSpec`` from the text of a spec file (``source`` names it in errors).

    >>> parse_spec('[[unaligned]]\\nname = "x"\\nshape = ["N", 8]\\n[[outputs]]\\nname = "y"\\nshape = ["N", 2]\\n'
    ...            ).outputs[0].shape
    ('N', 2)
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise SpecFileError(f"{source}: reading a spec file needs Python 3.11 or later (tomllib), or the "
                                "tomli package: pip install tomli") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecFileError(f"{source}: not valid TOML ({e}); fix the syntax there (strings need quotes, "
                            "each input is a [[unaligned]] table)") from None
    return spec_from_dict(data, source)


def read_spec(path: str | Path) -> ModelSpec:
    """The ``ModelSpec`` of the spec file at ``path``.

    >>> read_spec(EXAMPLE).name
    'AnimalSound'
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"{p}: no such spec file; check the path (a bundled example: {EXAMPLE})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecFileError(f"{p}: cannot read it ({e}); give a UTF-8 TOML file") from None
    return parse_spec(text, str(p))


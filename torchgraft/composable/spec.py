"""Input and output specs of a composable model: shape, dtype, vocabulary, name, compute hint.

A spec's shape is ``(batch, ...)``: the first dim is the batch (a symbol such as ``"N"``, or a
size). For continuous (float) data the next dim is the channels and the rest is the *grid*
(``("N", 3, 64, 64)``: 3 channels on a 64x64 grid; ``("N", 8)``: a vector of 8 features;
``("N",)``: one number). Discrete data (an int dtype with a ``vocab``) has no channel dim: every
dim after the batch is grid (``("N", "L")``: a sequence of tokens; ``("N",)``: one token).

The grid gives the *structure* class (DL-Art-School's design notes):

- ``point``: no grid (structural size O(1)): a label, a scalar, a feature vector;
- ``low``: fewer than ``HIGH_AT`` grid positions, or a variable length (a symbolic grid dim
  such as ``"L"`` counts as low: a sequence), e.g. a token sequence;
- ``high``: ``HIGH_AT`` positions or more, e.g. a 64x64 image (4096) or 4096 audio samples.

Dense computation (attention, O(n^2) in the positions) suits point and low data; high data must be
reduced (strided convolutions) first, which is why ``compute="dense"`` on a high input is refused.

>>> Input(("N", 3, 64, 64), name="image").structure
'high'
>>> Input(("N", "L"), dtype="int64", vocab=1000, name="text").structure
'low'
"""

from __future__ import annotations

import functools
import keyword
import math
from dataclasses import dataclass

from torch import nn

from torchgraft.errors import TorchgraftError
from torchgraft.ir.types import Dim, TensorType

HIGH_AT = 1000
"""A fixed grid with at least this many positions has high structure."""

STRUCTURES = ("point", "low", "high")
COMPUTE_HINTS = ("small", "medium", "high", "dense")
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")


class SpecError(TorchgraftError, ValueError):
    """An input/output spec, or a combination of them given to ``universal``, cannot make a model.

    The message names the spec and the fix.
    """


@functools.cache
def _module_attributes() -> frozenset[str]:
    """Names an ``nn.Module`` instance already has (``training``, ``forward``, ``state_dict``, ...)."""
    return frozenset(dir(nn.Module()))


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise SpecError(f"{kind} needs a name= (a Python identifier such as 'image'); it names the forward "
                        "argument and the encoder/decoder module")
    if not name.isidentifier() or keyword.iskeyword(name) or name == "self":
        raise SpecError(f"{kind} name {name!r} is not a Python identifier; it becomes a forward argument and a "
                        "module attribute, so use letters, digits and '_' (e.g. 'image_1')")
    if name.startswith("_") or name in _module_attributes():
        raise SpecError(f"{kind} name {name!r} clashes with an nn.Module attribute or is private; choose "
                        f"another (e.g. '{name.strip('_')}_in')")
    return name


def _check_shape(where: str, shape: object) -> tuple[Dim, ...]:
    if not isinstance(shape, (tuple, list)) or not shape:
        raise SpecError(f"{where}: shape must be a non-empty tuple such as ('N', 3, 64, 64), got {shape!r}")
    for i, d in enumerate(shape):
        ok = (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d.isidentifier())
        if not ok:
            raise SpecError(f"{where}: dim {i} is {d!r}; a dim is a positive size or a symbol name such as 'N'")
    return tuple(shape)


@dataclass(frozen=True, slots=True)
class Spec:
    """What ``Input`` and ``Output`` share (see the module docstring for the shape convention).

    ``dtype`` defaults to ``"int64"`` when ``vocab`` is given, else ``"float32"``. ``structure`` is
    inferred (``"point"``, ``"low"`` or ``"high"``) unless given, e.g. ``structure="high"`` for a
    grid the inference would call low; ``compute``
    is a hint for this part: ``"small"``, ``"medium"``, ``"high"`` (its own width and depth) or
    ``"dense"`` (attention over every position: point and low data only).
    """

    shape: tuple[Dim, ...]
    dtype: str = ""
    vocab: int | None = None
    name: str = ""
    compute: str | None = None
    structure: str = ""

    def __post_init__(self) -> None:
        kind = type(self).__name__
        object.__setattr__(self, "name", _check_name(kind, self.name))
        where = f"{kind} {self.name!r}"
        object.__setattr__(self, "shape", _check_shape(where, self.shape))
        if not self.dtype:
            object.__setattr__(self, "dtype", "int64" if self.vocab is not None else "float32")
        self._check_dtype(where)
        if self.compute is not None and self.compute not in COMPUTE_HINTS:
            raise SpecError(f"{where}: compute={self.compute!r} is not one of {COMPUTE_HINTS} (or None)")
        self._check_structure(where)
        object.__setattr__(self, "structure", self.structure or self._inferred())

    def _check_dtype(self, where: str) -> None:
        if self.dtype in INT_DTYPES:
            if self.vocab is None:
                raise SpecError(f"{where}: dtype {self.dtype} is discrete and needs vocab= (the number of "
                                "distinct values, e.g. vocab=1000); for numbers use a float dtype")
            if isinstance(self.vocab, bool) or not isinstance(self.vocab, int) or self.vocab < 2:
                raise SpecError(f"{where}: vocab must be an int >= 2, got {self.vocab!r}")
        elif self.dtype in FLOAT_DTYPES:
            if self.vocab is not None:
                raise SpecError(f"{where}: vocab={self.vocab!r} is given but dtype {self.dtype} is continuous; "
                                "discrete data needs an int dtype (dtype='int64'), or drop vocab")
        else:
            raise SpecError(f"{where}: dtype {self.dtype!r} is not one of {FLOAT_DTYPES + INT_DTYPES} "
                            "(bool data: use int64 with vocab=2)")
        if not self.discrete and len(self.shape) >= 2 and not isinstance(self.shape[1], int):
            raise SpecError(f"{where}: dim 1 of continuous data is its channels (features), so it must be a "
                            f"size, got {self.shape[1]!r}; for a sequence of numbers write ('N', 1, 'L')")

    def _check_structure(self, where: str) -> None:
        hint = self.structure
        if not hint:
            return
        if hint not in STRUCTURES:
            raise SpecError(f"{where}: structure={hint!r} is not one of {STRUCTURES}")
        if (hint == "point") != (not self.grid):
            raise SpecError(f"{where}: structure={hint!r} does not fit grid {self.grid}; 'point' means no grid "
                            "dims after the batch (and channels)")
        if hint == "high" and not all(isinstance(d, int) for d in self.grid):
            raise SpecError(f"{where}: structure='high' needs a fixed grid (strided convolutions reduce it), "
                            f"got {self.grid}; give the grid sizes")

    @property
    def discrete(self) -> bool:
        """True for int data with a vocabulary (tokens, labels)."""
        return self.dtype in INT_DTYPES

    @property
    def batch(self) -> Dim:
        """The batch dim (``"N"``)."""
        return self.shape[0]

    @property
    def channels(self) -> int:
        """Features per grid position: 1 for discrete data and one number per sample."""
        if self.discrete or len(self.shape) < 2:
            return 1
        return int(self.shape[1])

    @property
    def grid(self) -> tuple[Dim, ...]:
        """The dims after the batch (and channels, for continuous data): the data's structure."""
        return self.shape[1:] if self.discrete else self.shape[2:]

    @property
    def spatial_dims(self) -> int:
        """How many grid dims (0 for point data)."""
        return len(self.grid)

    @property
    def positions(self) -> int | None:
        """The number of grid positions, None when a grid dim is a symbol."""
        if not all(isinstance(d, int) for d in self.grid):
            return None
        return math.prod(int(d) for d in self.grid)

    def _inferred(self) -> str:
        """``"point"``, ``"low"`` or ``"high"`` (the module docstring says how it is inferred)."""
        if not self.grid:
            return "point"
        n = self.positions
        return "low" if n is None or n < HIGH_AT else "high"

    @property
    def type(self) -> TensorType:
        """The tensor type of the data."""
        return TensorType(self.shape, self.dtype)

    def describe(self) -> str:
        """``high 2-D continuous`` style summary."""
        kind = "discrete" if self.discrete else "continuous"
        return f"{self.structure} {self.spatial_dims}-D {kind}" if self.grid else f"point {kind}"


@dataclass(frozen=True, slots=True)
class Input(Spec):
    """One input of a composable model.

    >>> text = Input(("N", "L"), dtype="int64", vocab=1000, name="text")
    >>> text.structure, text.spatial_dims, text.discrete
    ('low', 1, True)
    """

    def __post_init__(self) -> None:
        Spec.__post_init__(self)
        if self.compute == "dense" and self.structure == "high":
            raise SpecError(f"Input {self.name!r}: dense computation (attention over every position) is demanded "
                            f"on a high-structure input ({self.positions} positions: O(n^2) = "
                            f"{(self.positions or 0) ** 2:,} pairs); drop compute='dense' so strided "
                            "convolutions reduce it first, or give it a smaller grid")


@dataclass(frozen=True, slots=True)
class Output(Spec):
    """One output of a composable model. A discrete output (int dtype with ``vocab``) is produced as
    logits with the classes in dim 1: ``Output(("N",), vocab=10)`` gives ``(N, 10)``, and
    ``Output(("N", 64, 64), vocab=4)`` gives ``(N, 4, 64, 64)`` (what ``F.cross_entropy`` takes).

    >>> Output(("N",), vocab=10, name="cls").result_shape
    ('N', 10)
    """

    def __post_init__(self) -> None:
        Spec.__post_init__(self)
        if self.compute == "dense":
            raise SpecError(f"Output {self.name!r}: compute='dense' applies to inputs; give 'small', "
                            "'medium' or 'high'")

    @property
    def result_shape(self) -> tuple[Dim, ...]:
        """The shape the model returns for this output (logits for discrete outputs)."""
        if self.discrete:
            return (self.batch, int(self.vocab or 0), *self.grid)
        return self.shape

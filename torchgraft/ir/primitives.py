"""Primitive ops: one frozen dataclass per op family.

A primitive stands for one ``torch.nn`` layer (a leaf module with its own parameters)
or, inside a dataflow graph, for the same op called functionally (``F.relu(x)``).
Field names are the torch constructor's argument names, so a primitive re-emits as
an ordinary constructor call (``nn.Conv2d(3, 16, kernel_size=3, padding=1)``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from torchgraft.errors import IRError
from torchgraft.ir.activations import ActKind, Spelling
from torchgraft.ir.reparam import Reparam


def _check_op(obj: Primitive) -> None:
    if obj.op not in obj.ops:
        raise IRError(f"{type(obj).__name__}.op={obj.op!r} is not one of {sorted(obj.ops)}")
    if not hasattr(nn, obj.op):
        raise IRError(f"torch.nn has no layer {obj.op!r}")


def _positive(name: str, value: Any) -> None:
    vals = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in vals):
        raise IRError(f"{name} must be a positive int (or tuple of them), got {value!r}")


@functools.cache
def ctor_signature(op: str) -> inspect.Signature:
    """The constructor signature of ``torch.nn.<op>``; for layers whose ``__init__`` takes only
    ``*args, **kwargs`` (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) the one their primitive family declares."""
    sig = inspect.signature(getattr(nn, op).__init__)
    if all(p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        declared = getattr(primitive_class_for(op), "signature", None)
        if declared is not None:
            return declared(op)  # type: ignore[no-any-return]
    return sig


@functools.cache
def torch_defaults(op: str) -> dict[str, Any]:
    """Constructor defaults of ``torch.nn.<op>`` (used to omit default arguments)."""
    sig = ctor_signature(op)
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k not in ("device", "dtype")}


@dataclass(frozen=True, slots=True)
class Primitive:
    """Base of all primitives. ``op`` is the ``torch.nn`` class name it stands for.

    ``reparam`` lists the reparametrizations registered on the layer (``weight_norm``, ...), in
    order: the layer is built, then each is applied (``ir.reparam``). Not a constructor argument.
    """

    ops: ClassVar[frozenset[str]] = frozenset()
    positional: ClassVar[int] = 0
    op: str
    reparam: tuple[Reparam, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        _check_op(self)

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword constructor arguments (defaults left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_CTOR}
        names = list(values)
        pos = [values[n] for n in names[: self.positional]]
        defaults = torch_defaults(self.op)
        kw = {n: values[n] for n in names[self.positional:]
              if not (n in defaults and _same(defaults[n], values[n]))}
        return pos, kw

    def build(self, device: str | torch.device | None = None) -> nn.Module:
        """A fresh ``torch.nn`` module for this primitive."""
        pos, kw = self.ctor()
        kw = {k: v.build(device) if isinstance(v, Primitive) else v for k, v in kw.items()}  # nested layers
        cls = getattr(nn, self.op)
        if device is not None and "device" in inspect.signature(cls.__init__).parameters:
            kw["device"] = device
        layer: nn.Module = cls(*pos, **kw)
        for r in self.reparam:
            layer = r.apply(layer)
        return layer

    def state(self) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
        """(name, shape, is_parameter) of the module's own persistent state."""
        return _state_of(self)

    def label(self) -> str:
        """Short text for the printer."""
        pos, kw = self.ctor()
        args = [_short(v) for v in pos] + [f"{k}={_short(v)}" for k, v in kw.items()]
        text = f"{self.op}({', '.join(args)})" if args else self.op
        return text + "".join(f" + {r.label()}" for r in self.reparam)

    def __rshift__(self, other: object) -> Any:
        """``a >> b``: one flat ``Chain`` of ``a`` then ``b`` (``ir.nodes.pipe``)."""
        from torchgraft.ir.nodes import pipe

        return pipe(self, other)  # type: ignore[arg-type]


NOT_CTOR = frozenset({"op", "spelling", "reparam"})
"""Primitive fields that are not constructor arguments."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, tuple) and not isinstance(a, tuple):
        return all(x == a for x in b)
    return type(a) is type(b) and a == b if not isinstance(a, (int, float)) else a == b and type(a) is type(b)


def _short(v: Any) -> str:
    if isinstance(v, tuple) and v and all(x == v[0] for x in v):
        return repr(v[0])
    return repr(v)


@functools.lru_cache(maxsize=4096)
def _state_of(prim: Primitive) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    mod = prim.build(device="meta")
    out = [(n, tuple(p.shape), True) for n, p in mod.named_parameters(recurse=True)]
    persistent = {n for n, _ in mod.state_dict(keep_vars=True).items()}
    out += [(n, tuple(b.shape), False) for n, b in mod.named_buffers(recurse=True) if n in persistent]
    return tuple(out)


IntOr = int | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Conv(Primitive):
    """Conv1d/2d/3d and ConvTranspose1d/2d/3d."""

    ops: ClassVar[frozenset[str]] = frozenset(
        {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"})
    positional: ClassVar[int] = 2
    in_channels: int = 1
    out_channels: int = 1
    kernel_size: IntOr = 1
    stride: IntOr = 1
    padding: IntOr | str = 0
    output_padding: IntOr = 0
    dilation: IntOr = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        _check_op(self)
        for n in ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups"):
            _positive(f"{self.op}.{n}", getattr(self, n))
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise IRError(f"{self.op}: in_channels={self.in_channels} and out_channels={self.out_channels} "
                          f"must be divisible by groups={self.groups}")

    @property
    def transposed(self) -> bool:
        """True for ConvTranspose layers."""
        return self.op.startswith("ConvTranspose")

    @property
    def dims(self) -> int:
        """Spatial dimensions (1, 2 or 3)."""
        return int(self.op[-2])

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        pos, kw = Primitive.ctor(self)
        if not self.transposed:
            kw.pop("output_padding", None)
        kw["kernel_size"] = self.kernel_size
        kw = {"kernel_size": kw.pop("kernel_size"), **kw}
        for k, v in list(kw.items()):
            if isinstance(v, tuple) and v and all(x == v[0] for x in v):
                kw[k] = v[0]
        return pos, kw


@dataclass(frozen=True, slots=True)
class Linear(Primitive):
    """nn.Linear (and subclasses with the same behaviour)."""

    ops: ClassVar[frozenset[str]] = frozenset({"Linear"})
    positional: ClassVar[int] = 2
    op: str = "Linear"
    in_features: int = 1
    out_features: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        _check_op(self)
        _positive("Linear.in_features", self.in_features)
        _positive("Linear.out_features", self.out_features)


@dataclass(frozen=True, slots=True)
class BatchNorm(Primitive):
    """BatchNorm1d/2d/3d."""

    ops: ClassVar[frozenset[str]] = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d"})
    positional: ClassVar[int] = 1
    num_features: int = 1
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True

    def __post_init__(self) -> None:
        _check_op(self)
        _positive(f"{self.op}.num_features", self.num_features)


@dataclass(frozen=True, slots=True)
class LayerNorm(Primitive):
    """nn.LayerNorm."""

    ops: ClassVar[frozenset[str]] = frozenset({"LayerNorm"})
    positional: ClassVar[int] = 1
    op: str = "LayerNorm"
    normalized_shape: tuple[int, ...] = (1,)
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self) -> None:
        _check_op(self)
        _positive("LayerNorm.normalized_shape", self.normalized_shape)

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        pos, kw = Primitive.ctor(self)
        if len(self.normalized_shape) == 1:
            pos = [self.normalized_shape[0]]
        return pos, kw


@dataclass(frozen=True, slots=True)
class GroupNorm(Primitive):
    """nn.GroupNorm."""

    ops: ClassVar[frozenset[str]] = frozenset({"GroupNorm"})
    positional: ClassVar[int] = 2
    op: str = "GroupNorm"
    num_groups: int = 1
    num_channels: int = 1
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self) -> None:
        _check_op(self)
        if self.num_channels % self.num_groups:
            raise IRError(f"GroupNorm: num_channels={self.num_channels} not divisible by num_groups={self.num_groups}")


@dataclass(frozen=True, slots=True)
class Activation(Primitive):
    """Any elementwise activation; ``kind`` says which, ``options`` its extra arguments.

    The module ``nn.ReLU()``, ``F.relu(x)``, ``torch.relu(x)``, ``x.relu()`` and the in-place
    forms are all ``Activation(kind=ActKind.RELU)``; ``spelling`` and ``inplace`` record how
    to write it back.
    """

    ops: ClassVar[frozenset[str]] = frozenset(k.module for k in ActKind)
    op: str = "ReLU"
    kind: ActKind = ActKind.RELU
    inplace: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    spelling: Spelling = Spelling.MODULE

    def __post_init__(self) -> None:
        if self.op != self.kind.module:
            raise IRError(f"Activation op {self.op!r} does not match kind {self.kind.name}; use Activation.of(kind)")
        known = set(self.kind.options)
        for k, _ in self.options:
            if k not in known:
                raise IRError(f"{self.kind.module} has no option {k!r}; known: {sorted(known)}")

    @staticmethod
    def of(kind: ActKind, *, inplace: bool = False, spelling: Spelling = Spelling.MODULE,
           **options: Any) -> Activation:
        """Build an activation of ``kind`` (options such as ``negative_slope=0.2``)."""
        return Activation(kind.module, kind, inplace, tuple(sorted(options.items())), spelling)

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        defaults = torch_defaults(self.op)
        kw = {k: v for k, v in self.options if not _same(defaults.get(k, object()), v)}
        if self.inplace and "inplace" in defaults:
            kw["inplace"] = True
        return [], kw


@dataclass(frozen=True, slots=True)
class Dropout(Primitive):
    """Dropout, Dropout1d/2d/3d, AlphaDropout."""

    ops: ClassVar[frozenset[str]] = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"})
    positional: ClassVar[int] = 0
    op: str = "Dropout"
    p: float = 0.5
    inplace: bool = False

    def __post_init__(self) -> None:
        _check_op(self)
        if not 0.0 <= self.p <= 1.0:
            raise IRError(f"{self.op}.p must be in [0, 1], got {self.p!r}")

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        pos, kw = Primitive.ctor(self)
        if "p" in kw:
            pos = [kw.pop("p")]
        return pos, kw


@dataclass(frozen=True, slots=True)
class Identity(Primitive):
    """nn.Identity."""

    ops: ClassVar[frozenset[str]] = frozenset({"Identity"})
    op: str = "Identity"


@dataclass(frozen=True, slots=True)
class TorchLayer(Primitive):
    """Any other ``torch.nn`` layer (pooling, Flatten, Embedding, MultiheadAttention, ...).

    ``args`` are its constructor keyword arguments, recovered from the instance and
    checked at capture by rebuilding the layer and comparing state and ``extra_repr``.
    """

    op: str = "Identity"
    args: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(getattr(nn, self.op, None), type) or not issubclass(getattr(nn, self.op), nn.Module):
            raise IRError(f"TorchLayer op {self.op!r} is not a torch.nn layer class")

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        """Keyword arguments that differ from the defaults. A tuple equal to a scalar default stays:
        most of these layers keep what they were given (``nn.MaxPool3d(2, padding=(0, 0, 0))`` has
        ``padding == (0, 0, 0)``, not ``0``), and the rebuilt layer must have the same attributes."""
        defaults = torch_defaults(self.op)
        return [], {k: v for k, v in self.args
                    if not (k in defaults and _same(defaults[k], v) and type(defaults[k]) is type(v))}


@dataclass(frozen=True, slots=True)
class Recurrent(Primitive):
    """nn.LSTM, nn.GRU and nn.RNN: their state keys (``weight_ih_l0``, ``weight_hh_l1_reverse``, ...)
    are the layer's own, and the call returns ``(output, h_n)`` or, for LSTM, ``(output, (h_n, c_n))``.

    ``nonlinearity`` applies to ``nn.RNN`` only and ``proj_size`` to ``nn.LSTM`` only; the other
    layers keep the defaults (``"tanh"``, ``0``), which their constructors do not take.
    """

    ops: ClassVar[frozenset[str]] = frozenset({"LSTM", "GRU", "RNN"})
    positional: ClassVar[int] = 2
    op: str = "LSTM"
    input_size: int = 1
    hidden_size: int = 1
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    def __post_init__(self) -> None:
        _check_op(self)
        for n in ("input_size", "hidden_size", "num_layers"):
            _positive(f"{self.op}.{n}", getattr(self, n))
        if self.nonlinearity not in (("tanh", "relu") if self.op == "RNN" else ("tanh",)):
            raise IRError(f"{self.op}.nonlinearity={self.nonlinearity!r}: nn.RNN takes 'tanh' or 'relu'; "
                          "nn.LSTM and nn.GRU have none (keep 'tanh')")
        if not 0 <= self.proj_size < self.hidden_size or (self.proj_size and self.op != "LSTM"):
            raise IRError(f"{self.op}.proj_size={self.proj_size!r}: only nn.LSTM takes it, and it must be "
                          f"in [0, hidden_size={self.hidden_size})")
        if not 0.0 <= self.dropout <= 1.0:
            raise IRError(f"{self.op}.dropout must be in [0, 1], got {self.dropout!r}")

    @staticmethod
    def signature(op: str) -> inspect.Signature:
        """The keyword signature ``nn.<op>`` accepts (its ``__init__`` only says ``*args, **kwargs``)."""
        kw = inspect.Parameter.POSITIONAL_OR_KEYWORD
        names: list[tuple[str, Any]] = [("input_size", inspect.Parameter.empty),
                                        ("hidden_size", inspect.Parameter.empty), ("num_layers", 1)]
        names += [("nonlinearity", "tanh")] if op == "RNN" else []
        names += [("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)]
        names += [("proj_size", 0)] if op == "LSTM" else []
        params = [inspect.Parameter("self", kw)] + [inspect.Parameter(n, kw, default=d) for n, d in names]
        return inspect.Signature(params + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
                                           for n in ("device", "dtype")])

    def ctor(self) -> tuple[list[Any], dict[str, Any]]:
        pos, kw = Primitive.ctor(self)
        accepted = ctor_signature(self.op).parameters
        return pos, {k: v for k, v in kw.items() if k in accepted}

    def build(self, device: str | torch.device | None = None) -> nn.Module:
        pos, kw = self.ctor()
        return getattr(nn, self.op)(*pos, **kw, device=device)  # type: ignore[no-any-return]


PRIMITIVE_CLASSES: tuple[type[Primitive], ...] = (
    Conv, Linear, BatchNorm, LayerNorm, GroupNorm, Activation, Dropout, Identity, Recurrent, TorchLayer)


def primitive_class_for(op: str) -> type[Primitive]:
    """The primitive family that covers ``torch.nn.<op>`` (TorchLayer when none is specific)."""
    for cls in PRIMITIVE_CLASSES[:-1]:
        if op in cls.ops:
            return cls
    return TorchLayer

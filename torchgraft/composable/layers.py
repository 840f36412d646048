"""IR building blocks of composable models: layers as capture would record them, and a forward builder.

Every layer here is the primitive that capturing the same ``torch.nn`` layer gives (``Conv``,
``GroupNorm``, ``TorchLayer("MultiheadAttention", ...)``), so passes treat these models like
captured ones. ``Flow`` writes a Block's forward as a Graph, one call at a time::

    f = Flow("x")
    h = f.child("h", "stem", f.ref("x"))
    block("Encoder", [("stem", conv_block(2, 3, 8, 2))], f.graph(h))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchgraft.ir.activations import ActKind
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, MethodCall, Op
from torchgraft.ir.nodes import Block, Chain, ClassRef, Node
from torchgraft.ir.primitives import Activation, Conv, GroupNorm, LayerNorm, Linear, TorchLayer
from torchgraft.ir.values import Arg, Ref, const_arg

MODULE = "torchgraft.composable"
"""The module the classes of composable models are recorded as coming from."""


@dataclass(frozen=True, slots=True)
class Built:
    """A part of a composable model: its IR node and what the plan says of it."""

    node: Node
    model_type: str
    width: int
    depth: int


def block(cls: str, children: Sequence[tuple[str, Node]], body: Node) -> Block:
    """A Block of class ``cls`` (recorded under ``torchgraft.composable``)."""
    return Block(ClassRef(MODULE, cls), tuple(children), body)


def camel(name: str) -> str:
    """``"photo_in"`` -> ``"PhotoIn"``: a class name from a spec name."""
    return "".join(p[:1].upper() + p[1:] for p in name.split("_") if p) or "Part"


class Flow:
    """The ops of one forward Graph, in order; every value name is made unique."""

    def __init__(self, *inputs: str | Input) -> None:
        self.inputs = tuple(i if isinstance(i, Input) else Input(i) for i in inputs)
        self.ops: list[Op] = []
        self.taken = {i.name for i in self.inputs}

    def ref(self, name: str) -> Ref:
        """A use of the input or value ``name``."""
        assert name in self.taken, name
        return Ref(name)

    def _add(self, name: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Ref:
        stem, k = name, 1
        while name in self.taken:
            name, k = f"{stem}_{k}", k + 1
        self.taken.add(name)
        self.ops.append(Op(name, target, tuple(_arg(a) for a in args),
                           tuple((key, _arg(v)) for key, v in kwargs.items())))
        return Ref(name)

    def child(self, name: str, path: str, *args: Any, **kwargs: Any) -> Ref:
        """``name = self.<path>(*args, **kwargs)``."""
        return self._add(name, ChildCall(path), args, kwargs)

    def fn(self, name: str, qualname: str, *args: Any, **kwargs: Any) -> Ref:
        """``name = <qualname>(*args, **kwargs)`` (an allow-listed function: ``torch.cat``)."""
        return self._add(name, FunctionCall(qualname), args, kwargs)

    def method(self, name: str, method: str, obj: Ref, *args: Any, **kwargs: Any) -> Ref:
        """``name = obj.<method>(*args, **kwargs)``."""
        return self._add(name, MethodCall(method), (obj, *args), kwargs)

    def graph(self, output: Arg) -> Graph:
        """The Graph returning ``output``."""
        return Graph(self.inputs, tuple(self.ops), output)


def _arg(value: Any) -> Arg:
    return value if isinstance(value, Ref) or not isinstance(value, (tuple, list, int, float, str, bool,
                                                                      type(None))) else const_arg(value)


def conv(d: int, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, *,
         transposed: bool = False, groups: int = 1) -> Conv:
    """``nn.Conv{d}d`` (or ``ConvTranspose{d}d``) as capture records it."""
    op = f"{'ConvTranspose' if transposed else 'Conv'}{d}d"
    return Conv(op, cin, cout, (kernel,) * d, (stride,) * d, (padding,) * d, (0,) * d, (1,) * d, groups, True,
                "zeros")


def linear(i: int, o: int) -> Linear:
    """``nn.Linear(i, o)``."""
    return Linear("Linear", i, o, True)


def norm(c: int) -> GroupNorm:
    """``nn.GroupNorm`` with 4 groups (fewer when ``c`` is not divisible): no batch statistics."""
    groups = next(g for g in (4, 2, 1) if c % g == 0)
    return GroupNorm("GroupNorm", groups, c)


def layer_norm(w: int) -> LayerNorm:
    """``nn.LayerNorm(w)``."""
    return LayerNorm("LayerNorm", (w,))


def silu() -> Activation:
    """``nn.SiLU()``."""
    return Activation.of(ActKind.SILU)


def gelu() -> Activation:
    """``nn.GELU()``."""
    return Activation.of(ActKind.GELU)


def layer(op: str, **args: Any) -> TorchLayer:
    """Any other ``nn`` layer, with its constructor arguments in ``nn``'s order (as capture records them)."""
    return TorchLayer(op, tuple(args.items()))


def embedding(vocab: int, width: int) -> TorchLayer:
    """``nn.Embedding(vocab, width)``."""
    return layer("Embedding", num_embeddings=vocab, embedding_dim=width, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False)


def unflatten(dim: int, sizes: Sequence[int]) -> TorchLayer:
    """``nn.Unflatten(dim, sizes)``."""
    return layer("Unflatten", dim=dim, unflattened_size=tuple(sizes))


def flatten(start: int = 1, end: int = -1) -> TorchLayer:
    """``nn.Flatten(start, end)``."""
    return layer("Flatten", start_dim=start, end_dim=end)


def avg_pool(d: int) -> TorchLayer:
    """``nn.AdaptiveAvgPool{d}d(1)``."""
    return layer(f"AdaptiveAvgPool{d}d", output_size=1)


def conv_block(d: int, cin: int, cout: int, stride: int = 1) -> Chain:
    """Conv (3, padding 1, ``stride``) + GroupNorm + SiLU: the grid shrinks to ``ceil(size / stride)``."""
    return Chain(conv(d, cin, cout, 3, stride, 1), norm(cout), silu(), names=("conv", "norm", "act"))


def stage(d: int, cin: int, cout: int, depth: int, stride: int = 2) -> Chain:
    """One resolution: a ``stride`` conv block, then ``depth - 1`` more at that resolution."""
    return Chain(conv_block(d, cin, cout, stride), *(conv_block(d, cout, cout) for _ in range(depth - 1)))


def up_block(d: int, cin: int, cout: int) -> Chain:
    """ConvTranspose (4, stride 2, padding 1: exactly doubles the grid) + GroupNorm + SiLU."""
    return Chain(conv(d, cin, cout, 4, 2, 1, transposed=True), norm(cout), silu(), names=("up", "norm", "act"))


def mlp(sizes: Sequence[int], last_act: bool = True) -> Chain:
    """Linear layers ``sizes[0] -> sizes[1] -> ...`` with SiLU between (and after, when ``last_act``)."""
    items: list[Node] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        items.append(linear(a, b))
        if last_act or i < len(sizes) - 2:
            items.append(silu())
    return Chain(*items)


def heads(width: int) -> int:
    """Attention heads for ``width`` features: one per 32 (at most 8), dividing ``width``."""
    return next(h for h in (8, 4, 2, 1) if width % h == 0 and width // h >= 32) if width >= 32 else 1


def transformer_layer(width: int) -> Block:
    """A pre-norm attention + MLP layer over ``(N, L, width)`` (any L): ``x + attn(norm1(x))``, then
    ``x + mlp(norm2(x))``."""
    attn = layer("MultiheadAttention", embed_dim=width, num_heads=heads(width), dropout=0.0, bias=True,
                 add_bias_kv=False, add_zero_attn=False, kdim=width, vdim=width, batch_first=True)
    f = Flow("x")
    h = f.child("h", "norm1", f.ref("x"))
    a = f.child("attended", "attn", h, h, h, need_weights=False)
    a = f.fn("attended", "operator.getitem", a, 0)
    x = f.fn("x", "operator.add", f.ref("x"), a)
    m = f.child("m", "mlp", f.child("h", "norm2", x))
    out = f.fn("out", "operator.add", x, m)
    return block("TransformerLayer", [("norm1", layer_norm(width)), ("attn", attn), ("norm2", layer_norm(width)),
                                      ("mlp", Chain(linear(width, 2 * width), gelu(), linear(2 * width, width)))],
                 f.graph(out))

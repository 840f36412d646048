"""Property-based tests: random combinator trees emit to code that computes what the IR says.

Trees of Chain/Parallel/SkipConnection/Block over shape-keeping primitives (convolutions with
equal in/out channels and "same" padding, BatchNorm, activations, Identity, Dropout in eval
mode), with random channel counts. Each tree is typed and initialised with
``build_model``, emitted, loaded, and compared with a small reference interpreter that runs
the tree with ``prim.build()`` modules holding the same weights; then the emitted model is
captured again and must be structurally equal to the tree (``roundtrip.normal_form``).
Blocks reuse a few class names with different contents, so the emitter has to generalise
instances (constructor arguments) or split them into variant classes.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchgraft
from torchgraft import ir
from torchgraft.backends.torch.roundtrip import first_difference, normal_form
from torchgraft.hand import build_model
from torchgraft.ir.activations import ActKind
from torchgraft.ir.nodes import Block, Chain, ChildRef, ClassRef, CombineKind, Node, Parallel, SkipConnection
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.traverse import join

SIZE = 8
ACTS = [ActKind.RELU, ActKind.GELU, ActKind.SILU, ActKind.TANH, ActKind.SIGMOID, ActKind.HARDSWISH]


def _leaf_of(kind: str, c: int) -> st.SearchStrategy[Node]:
    if kind == "conv":
        return st.builds(lambda k, bias, dw: ir.Conv2d(c, c, k, padding=k // 2, bias=bias, groups=c if dw else 1),
                         st.sampled_from([1, 3]), st.booleans(), st.booleans())
    if kind == "act":
        return st.sampled_from(ACTS).map(Activation.of)
    if kind == "drop":
        return st.sampled_from([0.1, 0.5]).map(lambda p: ir.Dropout(p=p))
    return st.sampled_from([ir.BatchNorm2d(c), ir.BatchNorm2d(c, eps=1e-3), ir.Identity()])


def _leaf(c: int) -> st.SearchStrategy[Node]:
    return st.one_of(*(_leaf_of(k, c) for k in ("conv", "act", "drop", "other")))


def _stack(c: int) -> st.SearchStrategy[Node]:
    """Two or three Blocks of one class and structure whose literals differ (constructor arguments)."""
    def instances(kinds: list[str]) -> st.SearchStrategy[Node]:
        one = st.tuples(*(_leaf_of(k, c) for k in kinds)).map(lambda xs: _block(list(xs), "Layer", "add"))
        return st.lists(one, min_size=2, max_size=3).map(lambda bs: Chain(*bs))

    return st.lists(st.sampled_from(["conv", "act", "drop", "other"]), min_size=1, max_size=3).flatmap(instances)


def _block(children: list[Node], name: str, combine: str) -> Block:
    """A Block whose forward runs its children in order, as a residual when ``combine`` is set."""
    kids = tuple((f"layer{i}", c) for i, c in enumerate(children))
    refs: Node = Chain(*(ChildRef(n) for n, _ in kids)) if len(kids) > 1 else ChildRef(kids[0][0])
    body: Node = SkipConnection(refs, combine) if combine else Chain(refs, Activation.of(ActKind.RELU))
    return Block(ClassRef("tests.props", name), kids, body)


def _tree(c: int) -> st.SearchStrategy[Node]:
    def extend(inner: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        items = st.lists(inner, min_size=1, max_size=3)
        chain = items.map(lambda xs: Chain(*xs))
        skip = st.builds(SkipConnection, inner, st.sampled_from(["add", "mul"]))
        par = st.builds(lambda bs, how: Parallel(tuple(bs), how), st.lists(inner, min_size=2, max_size=3),
                        st.sampled_from(["add", "mul"]))
        cat = st.lists(inner, min_size=2, max_size=2).map(
            lambda bs: Chain(Parallel(tuple(bs), ir.Combine("cat", 1)), ir.Conv2d(2 * c, c, 1)))
        block = st.builds(_block, items, st.sampled_from(["Unit", "Cell"]), st.sampled_from(["", "add"]))
        return st.one_of(chain, skip, par, cat, block, _stack(c))

    return st.recursive(_leaf(c), extend, max_leaves=8)


def _combine(kind: CombineKind, values: list[torch.Tensor]) -> torch.Tensor:
    if kind is CombineKind.CONCAT:
        return torch.cat(values, 1)
    out = values[0]
    for v in values[1:]:
        out = out * v if kind is CombineKind.MUL else out + v
    return out


def reference(node: Node, path: str, weights: dict[str, torch.Tensor], x: torch.Tensor,
              block: Block | None = None, block_path: str = "") -> torch.Tensor:
    """Run an IR tree directly: primitives as ``prim.build()`` modules with the model's weights."""
    if isinstance(node, ChildRef):
        assert block is not None
        return reference(block.child(node.path), join(block_path, node.path), weights, x)
    if isinstance(node, Primitive):
        mod = node.build().eval()
        prefix = path + "." if path else ""
        if mod.state_dict():
            mod.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        return mod(x)
    if isinstance(node, Chain):
        for name, item in node.named():
            x = reference(item, join(path, name), weights, x, block, block_path)
        return x
    if isinstance(node, SkipConnection):
        sub = path if block is not None else join(path, "body")
        return _combine(node.combine.kind, [x, reference(node.body, sub, weights, x, block, block_path)])  # type: ignore[arg-type]
    if isinstance(node, Parallel):
        outs = [reference(b, path if block is not None else join(path, n), weights, x, block, block_path)
                for n, b in node.named()]
        return _combine(node.combine.kind, outs)  # type: ignore[arg-type]
    if isinstance(node, Block):
        return reference(node.body, path, weights, x, node, path)
    raise AssertionError(f"unexpected node {node!r}")


@st.composite
def models(draw: Any) -> tuple[Node, int]:
    c = draw(st.sampled_from([2, 3, 4, 6]))
    return draw(_tree(c)), c


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(), st.integers(0, 2**16))
def test_random_trees_emit_reload_and_recapture(spec: tuple[Node, int], seed: int) -> None:
    tree, c = spec
    model = build_model(tree, ir.TensorType(("N", c, SIZE, SIZE)), seed=seed)
    code = torchgraft.emit(model)
    emitted = code.materialize().eval()
    assert list(emitted.state_dict()) == list(model.weights)
    x = torch.randn(2, c, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference(model.root, "", dict(model.weights), x)
        torch.testing.assert_close(emitted(x), expected, rtol=1e-5, atol=1e-5)
    recaptured = torchgraft.capture(emitted, (x,))
    assert first_difference(normal_form(model), normal_form(recaptured)) is None, code.source
    assert torchgraft.emit(model).source == code.source

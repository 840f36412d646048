"""Structural layers the Flux way: keyword Chains/Parallels, every Combine kind, pipes, builders.

Every emitted model is compared with an eager reference written in plain torch from the same
weights (``assert_close``, rtol=atol=1e-5), at batch sizes 2 and 3.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.backends.torch.roundtrip import first_difference, normal_form
from torchgraft.errors import IRError
from torchgraft.hand import build_model
from torchgraft.ir.printer import format_body, format_node
from torchgraft.ir.serialize import from_json, to_json
from torchgraft.ir.structure import recognize

C, S = 4, 5
TOL = {"rtol": 1e-5, "atol": 1e-5}
KINDS = ["add", "sub", "mul", "max", "min", "mean", "cat", "stack"]


def _fold(kind: str, values: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The plain-torch meaning of each kind (written independently of torchgraft)."""
    if kind == "cat":
        return torch.cat(values, dim)
    if kind == "stack":
        return torch.stack(values, dim)
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = {
        "add": operator.add, "mean": operator.add, "sub": operator.sub, "mul": operator.mul,
        "max": torch.maximum, "min": torch.minimum}[kind]
    out = values[0]
    for v in values[1:]:
        out = fn(out, v)
    return out / len(values) if kind == "mean" else out


def _conv(weights: dict[str, torch.Tensor], prefix: str, cin: int, cout: int, k: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    conv.load_state_dict({"weight": weights[f"{prefix}.weight"], "bias": weights[f"{prefix}.bias"]})
    return conv


def _emitted(model: ir.Model) -> nn.Module:
    ir.verify(model)
    return torchgraft.emit(model).materialize().eval()


def _inputs(*shape: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, *shape, generator=g) for n in (2, 3)]


# ------------------------------------------------------------------------------------------- the example

def _example() -> ir.Chain:
    return ir.Chain(
        stem=ir.Conv2d(3, 16, 3, padding=1), act=ir.ReLU(),
        neck=ir.SkipConnection(ir.Chain(reduce=ir.Conv2d(16, 4, 1), act=ir.ReLU(), expand=ir.Conv2d(4, 16, 1)),
                               combine="add"),
        mix=ir.Parallel(a=ir.Conv2d(16, 8, 1), b=ir.Conv2d(16, 8, 3, padding=1), combine=ir.Concat(dim=1)),
        gate=ir.Parallel(ir.Conv2d(16, 16, 1), ir.Conv2d(16, 16, 1), combine="max"),
    )


def test_example_builds_emits_and_matches_plain_torch() -> None:
    model = build_model(_example(), ir.TensorType(("N", 3, 32, 32)), seed=0)
    w = dict(model.weights)
    convs = {"stem": (3, 16, 3), "neck.body.reduce": (16, 4, 1), "neck.body.expand": (4, 16, 1),
             "mix.a": (16, 8, 1), "mix.b": (16, 8, 3), "gate.0": (16, 16, 1), "gate.1": (16, 16, 1)}
    assert set(w) == {f"{p}.{k}" for p in convs for k in ("weight", "bias")}
    emitted = _emitted(model)
    assert set(emitted.state_dict()) == set(w)
    m = {p: _conv(w, p, *spec) for p, spec in convs.items()}
    for x in _inputs(3, 32, 32):
        h = torch.relu(m["stem"](x))
        h = h + m["neck.body.expand"](torch.relu(m["neck.body.reduce"](h)))
        h = torch.cat([m["mix.a"](h), m["mix.b"](h)], 1)
        expected = torch.maximum(m["gate.0"](h), m["gate.1"](h))
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), expected, **TOL)
            assert not torch.allclose(expected, m["gate.0"](h) + m["gate.1"](h))  # max is not add here


def test_name_access_and_named() -> None:
    net = _example()
    assert net["neck"]["reduce"] == ir.Conv2d(16, 4, 1)  # through the SkipConnection's body
    assert net["neck"]["body"]["expand"] is net["neck"].body["expand"]
    assert net["mix"]["b"] == ir.Conv2d(16, 8, 3, padding=1)
    assert net["gate"][1] is net["gate"]["1"] and net[0] is net["stem"] and net[-1] is net["gate"]
    assert [n for n, _ in net.named()] == ["stem", "act", "neck", "mix", "gate"]
    assert [n for n, _ in net["neck"].named()] == ["body"]
    with pytest.raises(KeyError, match=r"Chain has no child 'stme'; names: \['stem', 'act', 'neck', 'mix', 'gate'\]"):
        net["stme"]
    with pytest.raises(KeyError, match=r"Parallel has no child 'c'; names: \['a', 'b'\]"):
        net["mix"]["c"]
    with pytest.raises(KeyError, match=r"its child is 'body', whose children are \['reduce', 'act', 'expand'\]"):
        net["neck"]["nope"]
    with pytest.raises(IndexError, match="has 5 children, no index 5"):
        net[5]
    block = ir.Block(ir.ClassRef("m", "B"), (("fc", ir.Linear(2, 2)),), ir.ChildRef("fc"))
    assert block["fc"] == ir.Linear(2, 2) and block[0] == ir.Linear(2, 2) and block.named() == block.children
    with pytest.raises(KeyError, match=r"Block<B> has no child 'fd'; names: \['fc'\]"):
        block["fd"]
    box = ir.Container("ModuleDict", (("q", ir.ReLU()), ("k", ir.Tanh())))
    assert box["k"] == ir.Tanh() and box[0] == ir.ReLU()


def test_keyword_construction_rules() -> None:
    assert ir.Chain(ir.ReLU(), ir.Tanh()).names == ("0", "1")
    assert ir.Chain(ir.ReLU(), ir.Tanh(), names=("a", "b")) == ir.Chain(a=ir.ReLU(), b=ir.Tanh())
    with pytest.raises(IRError, match="all positional .* or all keywords"):
        ir.Chain(ir.ReLU(), act=ir.Tanh())
    with pytest.raises(IRError, match="names= or keyword items, not both"):
        ir.Chain(names=("a",), b=ir.ReLU())
    with pytest.raises(IRError, match="all positional .* or all keywords"):
        ir.Parallel(ir.ReLU(), b=ir.Tanh())
    with pytest.raises(IRError, match="pass the join as combine="):
        ir.Parallel(ir.ReLU(), ir.Tanh(), "max")  # type: ignore[call-overload]
    legacy = ir.Parallel((ir.ReLU(), ir.Tanh()), ir.Combine("max"), ("a", "b"))
    assert legacy == ir.Parallel(a=ir.ReLU(), b=ir.Tanh(), combine="max")
    assert legacy == ir.Parallel((ir.ReLU(), ir.Tanh()), combine=torch.maximum, names=("a", "b"))
    with pytest.raises(IRError, match="combine given twice"):
        ir.Parallel((ir.ReLU(), ir.Tanh()), "add", combine="max")


def test_contains_walks_modules_and_forward_primitives() -> None:
    net = _example()
    assert net.contains(ir.Conv) and net["neck"].contains(ir.Activation)
    assert not net.contains(ir.BatchNorm) and not net["mix"].contains(ir.Activation)
    graph = ir.Graph((ir.Input("x"),), (ir.Op("y", ir.ChildCall("fc"), (ir.Ref("x"),)),
                                        ir.Op("z", ir.PrimCall(ir.GELU()), (ir.Ref("y"),))), ir.Ref("z"))
    block = ir.Block(ir.ClassRef("m", "B"), (("fc", ir.Linear(2, 2)),), graph)
    assert block.contains(ir.Activation) and block.contains(ir.LinearOp) and not block.contains(ir.Conv)
    inline = ir.Block(ir.ClassRef("m", "B"), (("fc", ir.Linear(2, 2)),), ir.Chain(ir.ChildRef("fc"), ir.Tanh()))
    assert inline.contains(ir.Activation) and ir.Chain(x=inline).contains((ir.Conv, ir.LinearOp))


# ------------------------------------------------------------------------------------------- combine kinds

def _spec(kind: str, dim: int) -> ir.Combine:
    return ir.Concat(dim) if kind == "cat" else ir.Stack(dim) if kind == "stack" else ir.Combine(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_at_module_level(kind: str) -> None:
    dim = 1
    net = ir.Chain(skip=ir.SkipConnection(ir.Conv2d(C, C, 1), _spec(kind, dim)),
                   par=ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 3, padding=1), ir.Conv2d(C, C, 1),
                                   combine=_spec(kind, dim)))
    skip_only = build_model(net["skip"], ir.TensorType(("N", C, S, S)), seed=1)
    par_only = build_model(ir.Chain(par=net["par"]), ir.TensorType(("N", C, S, S)), seed=2)
    for model, run in ((skip_only, lambda w, x: _fold(kind, [x, _conv(w, "body", C, C)(x)], dim)),
                       (par_only, lambda w, x: _fold(kind, [_conv(w, f"par.{i}", C, C, k)(x)
                                                            for i, k in enumerate((1, 3, 1))], dim))):
        emitted = _emitted(model)
        with torch.no_grad():
            for x in _inputs(C, S, S):
                torch.testing.assert_close(emitted(x), run(dict(model.weights), x), **TOL)
        recaptured = torchgraft.capture(emitted, (x,))
        assert first_difference(normal_form(model), normal_form(recaptured)) is None


def _block(body: ir.Node) -> ir.Block:
    kids = tuple((n, ir.Conv2d(C, C, k, padding=k // 2)) for n, k in (("a", 1), ("b", 3), ("c", 1)))
    return ir.Block(ir.ClassRef("tests.structural", "Joiner"), kids, body)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_inside_a_block_body(kind: str) -> None:
    a, b, c = ir.ChildRef("a"), ir.ChildRef("b"), ir.ChildRef("c")
    dim = 0 if kind == "stack" else 1
    body = ir.Chain(ir.SkipConnection(a, _spec("add", 1)), ir.Parallel(a, b, c, combine=_spec(kind, dim)))
    skip = ir.SkipConnection(b, _spec(kind, dim))
    for tree, seed in ((body, 3), (skip, 4)):
        model = build_model(_block(tree), ir.TensorType(("N", C, S, S)), seed=seed)
        w = dict(model.weights)
        m = {n: _conv(w, n, C, C, k) for n, k in (("a", 1), ("b", 3), ("c", 1))}
        source = torchgraft.emit(model).source
        if kind in ("max", "min", "stack", "sub"):
            assert {"max": "torch.maximum(", "min": "torch.minimum(", "stack": "torch.stack(", "sub": " - "}[kind] \
                in source
        emitted = _emitted(model)
        for x in _inputs(C, S, S):
            if tree is body:
                h = x + m["a"](x)
                expected = _fold(kind, [m["a"](h), m["b"](h), m["c"](h)], dim)
            else:
                expected = _fold(kind, [x, m["b"](x)], dim)
            with torch.no_grad():
                torch.testing.assert_close(emitted(x), expected, **TOL)


def test_combine_spellings_and_refusals() -> None:
    assert ir.Combine(torch.maximum) == ir.Combine("max")
    assert ir.Combine(operator.sub).kind is ir.CombineKind.SUB and ir.Combine(torch.add).kind is ir.CombineKind.ADD
    assert ir.Combine(torch.cat, 2) == ir.Concat(dim=2) and ir.Combine(torch.stack, 0) == ir.Stack(dim=0)
    assert ir.SkipConnection(ir.ReLU(), torch.minimum).combine == ir.Combine("min")
    for bad in (lambda a, b: a + b, "bogus", torch.relu, max, 3):  # torch.atan2 is accepted: test_combine_calls
        with pytest.raises(IRError, match="accepted: 'add', 'sub', 'mul', 'max', 'min', 'mean', 'cat', 'stack'"):
            ir.Combine(bad)  # type: ignore[arg-type]
    with pytest.raises(IRError, match="accepted"):
        ir.Parallel(ir.ReLU(), ir.Tanh(), combine=lambda a, b: a * b)
    with pytest.raises(IRError, match="takes no dim"):
        ir.Combine("add", dim=2)


def test_torch_maximum_combine_does_not_add() -> None:
    net = ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1), combine=ir.Combine(torch.maximum))
    model = build_model(ir.Chain(gate=net), ir.TensorType(("N", C, S, S)), seed=5)
    w = dict(model.weights)
    x = _inputs(C, S, S)[0]
    a, b = _conv(w, "gate.0", C, C)(x), _conv(w, "gate.1", C, C)(x)
    with torch.no_grad():
        out = _emitted(model)(x)
        torch.testing.assert_close(out, torch.maximum(a, b), **TOL)
        assert not torch.allclose(out, a + b)


# ------------------------------------------------------------------------------------------- named Parallel

def test_named_parallel_branches_give_their_state_keys() -> None:
    for split in (ir.Parallel(left=ir.Conv2d(C, 2, 1), right=ir.Conv2d(C, 2, 1), combine=ir.Concat(dim=1)),
                  ir.Parallel((ir.Conv2d(C, 2, 1), ir.Conv2d(C, 2, 1)), ir.Concat(1), ("left", "right"))):
        model = build_model(ir.Chain(split=split, head=ir.Conv2d(4, 1, 1)), ir.TensorType(("N", C, S, S)))
        assert set(model.weights) == {f"split.{b}.{k}" for b in ("left", "right") for k in ("weight", "bias")} | {
            "head.weight", "head.bias"}
        emitted = _emitted(model)
        assert list(emitted.state_dict()) == list(model.weights)
        w = dict(model.weights)
        for x in _inputs(C, S, S):
            h = torch.cat([_conv(w, "split.left", C, 2)(x), _conv(w, "split.right", C, 2)(x)], 1)
            with torch.no_grad():
                torch.testing.assert_close(emitted(x), _conv(w, "head", 4, 1)(h), **TOL)


# ------------------------------------------------------------------------------------------- pipes and builders

def test_pipe_makes_one_flat_chain() -> None:
    mlp = ir.Linear(784, 128, activation="relu") >> ir.Linear(128, 10) >> ir.Softmax(dim=1)
    assert mlp == ir.Chain(ir.LinearOp("Linear", 784, 128), ir.ReLU(), ir.LinearOp("Linear", 128, 10),
                           ir.Softmax(dim=1))
    named = ir.Chain(a=ir.ReLU(), b=ir.Tanh())
    assert (named >> ir.ReLU()).items == (named, ir.ReLU())
    assert (ir.ReLU() >> named >> ir.Chain(ir.Tanh(), ir.GELU())).items == (ir.ReLU(), named, ir.Tanh(), ir.GELU())
    skip = ir.SkipConnection(ir.ReLU())
    block = ir.Block(ir.ClassRef("m", "B"), (("fc", ir.Linear(2, 2)),), ir.ChildRef("fc"))
    par = ir.Parallel(ir.ReLU(), ir.Tanh())
    assert (skip >> block >> par).items == (skip, block, par)
    with pytest.raises(TypeError):
        ir.ReLU() >> 3  # type: ignore[operator]
    model = build_model(mlp, ir.TensorType(("N", 784)))
    w = dict(model.weights)
    emitted = _emitted(model)
    for x in _inputs(784):
        h = torch.relu(x @ w["0.weight"].T + w["0.bias"])
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), torch.softmax(h @ w["2.weight"].T + w["2.bias"], 1), **TOL)


def test_activation_argument_and_refusal() -> None:
    assert ir.Conv2d(3, 8, 3, activation="silu") == ir.Chain(ir.Conv2d(3, 8, 3), ir.SiLU())
    assert ir.Conv1d(3, 8, 3, activation="GELU") == ir.Chain(ir.Conv1d(3, 8, 3), ir.GELU())
    assert isinstance(ir.Linear(2, 3), ir.LinearOp) and ir.LinearLayer(2, 3) == ir.Linear(2, 3)
    with pytest.raises(IRError, match="unknown activation 'rleu'; known: relu, relu6"):
        ir.Linear(2, 3, activation="rleu")


def test_builders_equal_what_capture_makes() -> None:
    torch_layers = nn.Sequential(nn.Embedding(100, 32, padding_idx=-1), nn.LayerNorm(32, eps=1e-6),
                                 nn.Softmax(dim=-1), nn.LogSoftmax(dim=1), nn.Identity(), nn.Linear(32, 8))
    captured = torchgraft.capture(torch_layers, (torch.zeros(2, 7, dtype=torch.long),))
    built = ir.Chain(ir.Embedding(100, 32, padding_idx=-1), ir.LayerNorm(32, eps=1e-6), ir.Softmax(dim=-1),
                     ir.LogSoftmax(dim=1), ir.Identity(), ir.Linear(32, 8))
    assert captured.root == built
    assert isinstance(ir.LayerNorm((4, 8)), ir.LayerNormOp)


def test_embedding_chain_runs_like_torch() -> None:
    seq = ir.Chain(ir.Embedding(100, 32), ir.Linear(32, 32))
    model = build_model(seq, ir.TensorType(("N", 7), "int64"))
    w = dict(model.weights)
    emitted = _emitted(model)
    g = torch.Generator().manual_seed(2)
    for n in (2, 3):
        tokens = torch.randint(0, 100, (n, 7), generator=g)
        with torch.no_grad():
            expected = w["0.weight"][tokens] @ w["1.weight"].T + w["1.bias"]
            torch.testing.assert_close(emitted(tokens), expected, **TOL)


# ------------------------------------------------------------------------------------------- text and JSON

def test_printer_shows_the_new_kinds() -> None:
    par = ir.Parallel(ir.ReLU(), ir.Tanh(), combine="max")
    assert format_node(par).splitlines()[0] == "Parallel(max)"
    assert format_node(ir.Parallel(ir.ReLU(), ir.Tanh(), combine=ir.Stack(dim=0))).startswith("Parallel(stack(dim=0))")
    body = ir.Parallel(ir.ChildRef("a"), ir.SkipConnection(ir.ChildRef("b"), "sub"), combine=ir.Concat(dim=1))
    assert format_body(body) == "Parallel(cat(dim=1), a, SkipConnection(sub, b))"


def test_json_round_trip_of_every_kind() -> None:
    a, b = ir.ChildRef("a"), ir.ChildRef("b")
    items = {f"m_{k}": ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1), combine=_spec(k, 1)) for k in KINDS}
    items.update({f"s_{k}": ir.SkipConnection(ir.Conv2d(C, C, 1), _spec(k, 0)) for k in KINDS})
    items.update({f"b_{k}": _block(ir.Parallel(x=a, y=b, combine=_spec(k, 1))) for k in KINDS})
    root = ir.Container("ModuleDict", tuple(items.items()))
    model = ir.Model("AllKinds", root)
    back = from_json(to_json(model))
    assert back == model and to_json(back) == to_json(model)
    assert back.root["m_max"].combine == ir.Combine("max") and back.root["b_stack"].body.names == ("x", "y")


def test_recognize_reads_order_sensitive_joins() -> None:
    def graph(*ops: ir.Op) -> ir.Graph:
        return ir.Graph((ir.Input("x"),), ops, ir.Ref(ops[-1].name))

    f = ir.Op("f", ir.ChildCall("f"), (ir.Ref("x"),))
    g = ir.Op("g", ir.ChildCall("g"), (ir.Ref("x"),))
    x_minus = graph(f, ir.Op("d", ir.FunctionCall("operator.sub"), (ir.Ref("x"), ir.Ref("f"))))
    assert recognize(x_minus) == ir.SkipConnection(ir.ChildRef("f"), "sub")
    minus_x = graph(f, ir.Op("d", ir.FunctionCall("operator.sub"), (ir.Ref("f"), ir.Ref("x"))))
    assert recognize(minus_x) == minus_x
    both = graph(f, g, ir.Op("m", ir.FunctionCall("torch.maximum"), (ir.Ref("f"), ir.Ref("g"))))
    assert recognize(both) == ir.Parallel(ir.ChildRef("f"), ir.ChildRef("g"), combine="max")


def test_nodes_copy_as_values() -> None:
    """IR nodes are immutable values: copy and deepcopy give an equal node (Chain used to refuse deepcopy)."""
    import copy

    net = ir.Chain(stem=ir.Conv2d(3, 4, 3), act=ir.ReLU())
    assert copy.deepcopy(net) == net and copy.copy(net) == net
    assert copy.deepcopy(ir.Parallel(net, net, combine="max")) == ir.Parallel(net, net, combine="max")

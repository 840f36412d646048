"""``call`` combines (issue 13): an allow-listed function of two tensors, folded left, as a join.

``Parallel(a, b, c, combine=torch.atan2)`` means ``atan2(atan2(a(x), b(x)), c(x))`` and
``SkipConnection(body, combine=torch.hypot)`` means ``hypot(x, body(x))``. Every emitted model is
compared with an eager reference in plain torch from the same weights (``assert_close``,
rtol=atol=1e-5) at batch sizes 2 and 3; anything that is not such a function is refused.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.backends.torch.roundtrip import first_difference, normal_form
from torchgraft.errors import EmitError, IRError
from torchgraft.hand import build_model
from torchgraft.ir.printer import format_body, format_node
from torchgraft.ir.serialize import from_json, to_json

C, S = 4, 5
TOL = {"rtol": 1e-5, "atol": 1e-5}
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FUNCTIONS = [pytest.param(torch.atan2, id="atan2"), pytest.param(torch.logaddexp, id="logaddexp")]


def _conv(w: dict[str, torch.Tensor], prefix: str, k: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(C, C, k, padding=k // 2)
    conv.load_state_dict({"weight": w[f"{prefix}.weight"], "bias": w[f"{prefix}.bias"]})
    return conv


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, C, S, S, generator=g) for n in (2, 3)]


def _fold(fn: Fn, values: list[torch.Tensor]) -> torch.Tensor:
    out = values[0]
    for v in values[1:]:
        out = fn(out, v)
    return out


def _emitted(model: ir.Model) -> nn.Module:
    ir.verify(model)
    return torchgraft.emit(model).materialize().eval()


def _block(body: ir.Node) -> ir.Block:
    kids = tuple((n, ir.Conv2d(C, C, k, padding=k // 2)) for n, k in (("a", 1), ("b", 3), ("c", 1)))
    return ir.Block(ir.ClassRef("tests.combine_calls", "Joiner"), kids, body)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_module_level_parallel_and_skip(fn: Fn) -> None:
    net = ir.Chain(skip=ir.SkipConnection(ir.Conv2d(C, C, 1), combine=fn),
                   par=ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 3, padding=1), ir.Conv2d(C, C, 1),
                                   combine=fn))
    model = build_model(net, ir.TensorType(("N", C, S, S)), seed=1)
    name = fn.__name__
    assert model.root["par"].combine == ir.Combine("call", fn=f"torch.{name}")
    assert f"combine=torch.{name}" in torchgraft.emit(model).source
    emitted = _emitted(model)
    w = dict(model.weights)
    skip, par = _conv(w, "skip.body"), [_conv(w, f"par.{i}", k) for i, k in enumerate((1, 3, 1))]
    for x in _inputs():
        h = fn(x, skip(x))
        expected = _fold(fn, [p(h) for p in par])
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), expected, **TOL)
    recaptured = torchgraft.capture(emitted, (x,))
    assert first_difference(normal_form(model), normal_form(recaptured)) is None


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_inside_a_block_body(fn: Fn) -> None:
    a, b, c = ir.ChildRef("a"), ir.ChildRef("b"), ir.ChildRef("c")
    body = ir.Chain(ir.SkipConnection(a, combine=fn), ir.Parallel(a, b, c, combine=fn))
    model = build_model(_block(body), ir.TensorType(("N", C, S, S)), seed=2)
    source = torchgraft.emit(model).source
    name = fn.__name__
    assert f"torch.{name}(torch.{name}(" in source and "class Parallel" not in source
    emitted = _emitted(model)
    m = {n: _conv(dict(model.weights), n, k) for n, k in (("a", 1), ("b", 3), ("c", 1))}
    for x in _inputs():
        h = fn(x, m["a"](x))
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), _fold(fn, [m["a"](h), m["b"](h), m["c"](h)]), **TOL)


def test_three_branch_fold_order() -> None:
    """atan2 is not symmetric: the emitted fold is atan2(atan2(a, b), c), not any other order."""
    net = ir.Chain(par=ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1),
                                   combine=torch.atan2))
    model = build_model(net, ir.TensorType(("N", C, S, S)), seed=3)
    inner = build_model(_block(ir.Parallel(ir.ChildRef("a"), ir.ChildRef("c"), ir.ChildRef("b"),
                                           combine=torch.atan2)), ir.TensorType(("N", C, S, S)), seed=3)
    w, wi = dict(model.weights), dict(inner.weights)
    ref = [_conv(w, f"par.{i}") for i in range(3)]
    mi = {n: _conv(wi, n, k) for n, k in (("a", 1), ("b", 3), ("c", 1))}
    for emitted, parts in ((_emitted(model), lambda x: [r(x) for r in ref]),
                           (_emitted(inner), lambda x: [mi["a"](x), mi["c"](x), mi["b"](x)])):
        x = _inputs()[0]
        a, b, c = parts(x)
        with torch.no_grad():
            out = emitted(x)
            torch.testing.assert_close(out, torch.atan2(torch.atan2(a, b), c), **TOL)
            for other in (torch.atan2(a, torch.atan2(b, c)), torch.atan2(torch.atan2(b, a), c),
                          torch.atan2(torch.atan2(a, c), b)):
                assert not torch.allclose(out, other, **TOL)


def test_other_functions_and_emitted_imports() -> None:
    """operator.truediv is written with ``import operator``; a torch.nn.functional one as ``F.``."""
    net = ir.Chain(pw=ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1), combine=operator.truediv),
                   dist=ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1),
                                    combine=torch.nn.functional.pairwise_distance))
    model = build_model(net, ir.TensorType(("N", C, S, S)), seed=4)
    source = torchgraft.emit(model).source
    assert "import operator\n" in source and "combine=operator.truediv" in source
    assert "combine=F.pairwise_distance" in source and "import torch.nn.functional as F\n" in source
    emitted, w = _emitted(model), dict(model.weights)
    for x in _inputs():
        h = _conv(w, "pw.0")(x) / _conv(w, "pw.1")(x)
        expected = torch.nn.functional.pairwise_distance(_conv(w, "dist.0")(h), _conv(w, "dist.1")(h))
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), expected, **TOL)
    assert ir.Combine(torch.bitwise_and).commutative and not ir.Combine(torch.atan2).commutative


def test_printing_and_json_round_trip() -> None:
    a, b = ir.ChildRef("a"), ir.ChildRef("b")
    par = ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1), combine=torch.logaddexp)
    assert format_node(par).splitlines()[0] == "Parallel(torch.logaddexp)"
    body = ir.Parallel(a, ir.SkipConnection(b, torch.hypot), combine=torch.atan2)
    assert format_body(body) == "Parallel(torch.atan2, a, SkipConnection(torch.hypot, b))"
    root = ir.Container("ModuleDict", (("m", par), ("s", ir.SkipConnection(ir.Conv2d(C, C, 1), torch.atan2)),
                                       ("b", _block(body))))
    model = ir.Model("Calls", root)
    back = from_json(to_json(model))
    assert back == model and to_json(back) == to_json(model)
    assert back.root["s"].combine == ir.Combine(torch.atan2) and hash(back.root["s"].combine) == hash(
        ir.Combine(torch.atan2))
    ir.verify(back)


def _crafted(where: str) -> ir.Model:
    """A model read from JSON whose call combine names os.system (module level or in a Block body)."""
    par = ir.Parallel(ir.Conv2d(C, C, 1), ir.Conv2d(C, C, 1), combine=torch.atan2)
    body = _block(ir.Parallel(ir.ChildRef("a"), ir.ChildRef("b"), combine=torch.atan2))
    model = build_model(par if where == "module" else body, ir.TensorType(("N", C, S, S)), seed=5)
    text = to_json(model)
    assert text.count('"torch.atan2"') == 1
    return from_json(text.replace('"torch.atan2"', json.dumps("os.system")))


@pytest.mark.parametrize("where", ["module", "body"])
def test_crafted_json_function_is_refused(where: str) -> None:
    model = _crafted(where)
    with pytest.raises(IRError, match=r"combine calls 'os.system'.*not in torchgraft's allow-list"):
        ir.verify(model)
    with pytest.raises(EmitError, match=r"refusing to emit: .*combine calls 'os.system'"):
        torchgraft.emit(model)


def _needs_three(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return a + b + c


@pytest.mark.parametrize(("bad", "why"), [
    (lambda a, b: a + b, "not in torchgraft's function allow-list"),
    (os.system, "not in torchgraft's function allow-list"),
    (_needs_three, "not in torchgraft's function allow-list"),
    (torch.relu, r"torch.relu cannot join values: calling it on two tensors failed"),
    (torch.lerp, r"torch.lerp cannot join values: calling it on two tensors failed"),
    (torch.clamp_min_, "private or changes global state|changes its arguments in place|failed"),
    (operator.iadd, "changes its arguments in place"),
    (max, "builtins.max cannot join values"),
    (torch.set_printoptions, "changes global state"),
])
def test_refused_at_construction(bad: object, why: str) -> None:
    rule = "accepted: 'add', 'sub', 'mul', 'max', 'min', 'mean', 'cat', 'stack'.*takes two tensors positionally"
    for build in (ir.Combine, lambda f: ir.Parallel(ir.ReLU(), ir.Tanh(), combine=f),
                  lambda f: ir.SkipConnection(ir.ReLU(), combine=f)):
        with pytest.raises(IRError, match=f"(?s)({why}).*{rule}"):
            build(bad)


def test_call_fields_are_checked() -> None:
    with pytest.raises(IRError, match="needs fn"):
        ir.Combine("call")
    with pytest.raises(IRError, match="takes no fn"):
        ir.Combine("add", fn="torch.atan2")
    with pytest.raises(IRError, match="means the kind 'max'"):
        ir.Combine("call", fn="torch.maximum")
    with pytest.raises(IRError, match="given twice"):
        ir.Combine(torch.atan2, fn="torch.atan2")
    with pytest.raises(IRError, match="takes no dim"):
        ir.Combine(torch.atan2, dim=0)
    with pytest.raises(IRError, match="needs fn"):
        ir.Combine("call", fn="torch.atan2(x); import os")
    assert ir.Combine(torch.maximum) == ir.Combine("max") and ir.Combine(torch.atan2).fn == "torch.atan2"

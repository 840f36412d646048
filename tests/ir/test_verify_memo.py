"""``verify`` remembers the nodes it found clean (``ir.checkmemo``), by identity: a model edited after a
clean verify shares its unchanged nodes with the verified one, and a problem the edit brings in is still
reported, the same as with the memo off."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.errors import IRError
from torchgraft.ir import Block, Chain, ChildRef, ClassRef, Model, Opaque, StateSpec, checkmemo
from torchgraft.ir.codecheck import code_problems
from torchgraft.ir.traverse import with_bodies
from torchgraft.ir.verify import problems, verify


class Small(nn.Module):
    """``relu(linear(x))``: captured as a Block with a Chain body."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class Stack(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Small() for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


@pytest.fixture
def stack_ir() -> Model:
    torch.manual_seed(0)
    return torchgraft.capture(Stack(6), (torch.randn(2, 4),))


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    checkmemo.clear()
    yield
    checkmemo.ENABLED = True
    checkmemo.clear()


def _unmemoised(model: Model) -> list[str]:
    checkmemo.ENABLED = False
    try:
        return problems(model)
    finally:
        checkmemo.ENABLED = True


def _blocks(model: Model) -> Chain:
    chain = model.root.children[0][1]  # type: ignore[union-attr]
    assert isinstance(chain, Chain)
    return chain


def _with_block(model: Model, i: int, block: Block) -> Model:
    chain = _blocks(model)
    items = chain.items[:i] + (block,) + chain.items[i + 1:]
    root = replace(model.root, children=(("blocks", Chain(*items, names=chain.names)),))  # type: ignore[type-var]
    return replace(model, root=root)


def test_memo_fills_and_a_second_verify_agrees(stack_ir: Model) -> None:
    assert problems(stack_ir) == [] and checkmemo.size() > 0
    assert problems(stack_ir) == [] == _unmemoised(stack_ir)


@pytest.mark.parametrize("edit", ["missing child", "inline stateful", "dotted name", "bad class", "bad shape"])
def test_problem_in_an_edited_shared_tree_is_reported(stack_ir: Model, edit: str) -> None:
    verify(stack_ir)  # every node of it is now remembered as clean
    block = _blocks(stack_ir).items[3]
    assert isinstance(block, Block)
    weights = stack_ir.weights
    if edit == "missing child":  # a rewritten forward (members kept, as a pass writes it)
        bad = _with_block(stack_ir, 3, with_bodies(block, Chain(ChildRef("lin"), ir.SiLU()), None))
    elif edit == "inline stateful":
        bad = _with_block(stack_ir, 3, with_bodies(block, Chain(ChildRef("linear"), ir.LinearLayer(4, 4)), None))
    elif edit == "dotted name":
        bad = _with_block(stack_ir, 3, replace(block, constants=(("a.b", ir.Const(1)),)))
    elif edit == "bad class":
        bad = _with_block(stack_ir, 3, replace(block, cls=ClassRef("os; import x", "B")))
    else:
        weights = {**weights, "blocks.3.linear.weight": torch.zeros(4, 5)}
        bad = replace(stack_ir, weights=weights)
    found = problems(bad)
    assert found and found == _unmemoised(bad)
    assert any("blocks.3" in p for p in found), found
    with pytest.raises(IRError):
        verify(bad)
    assert problems(stack_ir) == []  # the original stays clean: only clean nodes were remembered


def test_a_problem_is_reported_every_time(stack_ir: Model) -> None:
    block = _blocks(stack_ir).items[0]
    assert isinstance(block, Block)
    bad = _with_block(stack_ir, 0, with_bodies(block, ChildRef("nope"), None))
    first = problems(bad)
    assert first and problems(bad) == first == _unmemoised(bad)


def test_helpers_are_part_of_the_memo_context(stack_ir: Model) -> None:
    graph_model = torchgraft.capture(Small(), (torch.randn(2, 4),))
    assert problems(graph_model) == []
    call = ir.Op("h", ir.FunctionCall("helpers.missing"), (ir.Ref("x"),))
    g = ir.Graph((ir.Input("x"),), (call,), ir.Ref("h"))
    root = replace(graph_model.root, body=g)
    with_helper = replace(graph_model, root=root,
                          helpers=(ir.Helper("missing", "def missing(x):\n    return x\n", "m"),))
    assert problems(with_helper) == []  # clean with the helper: remembered under these helpers
    without = replace(with_helper, helpers=())
    assert any("no such helper" in p for p in problems(without))
    assert any("no such helper" in p for p in code_problems(without))


def test_opaque_is_checked_every_time() -> None:
    """An Opaque's class check reads ``sys.modules``: a clean result then is not kept."""
    opaque = Opaque(ClassRef("tg_memo_fake_pkg", "Thing"), "untraceable", (StateSpec("w", (2,)),))
    m = Model("M", Chain(ir.ReLU(), opaque), weights={"1.w": torch.zeros(2)})
    assert problems(m) == []  # its module is not imported: nothing to check it against
    fake = types.ModuleType("tg_memo_fake_pkg")
    fake.Thing = int  # type: ignore[attr-defined]
    sys.modules["tg_memo_fake_pkg"] = fake
    try:
        assert any("is not an nn.Module class" in p for p in problems(m))
        assert any("is not an nn.Module class" in p for p in code_problems(m))
    finally:
        del sys.modules["tg_memo_fake_pkg"]


def test_memo_is_bounded(stack_ir: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkmemo, "LIMIT", 5)
    for _ in range(3):
        assert problems(stack_ir) == []
        assert checkmemo.size() < 5 + 2 * len(_blocks(stack_ir).items) + 10  # starts afresh once full
    checkmemo.clear()
    assert checkmemo.size() == 0


def test_swap_activation_output_verifies_the_same(stack_ir: Model) -> None:
    out = torchgraft.passes.run(stack_ir, "swap-activation{from=relu to=silu}").model
    assert problems(out) == [] == _unmemoised(out)
    block = _blocks(out).items[2]
    assert isinstance(block, Block)
    bad = _with_block(out, 2, with_bodies(block, Chain(ChildRef("linear"), ChildRef("linear2")), None))
    assert problems(bad) == _unmemoised(bad) != []


def test_plain_body_fast_path_falls_back_to_the_full_check() -> None:
    """A Chain body of refs and primitives is passed by a quick look; anything it cannot show clean is checked
    in full, with the usual messages."""
    kids = (("lin", ir.LinearLayer(4, 4)), ("list", ir.Container("ModuleList", (("0", ir.ReLU()),))))
    cls = ClassRef("demo", "B")
    ok = Block(cls, kids, Chain(ChildRef("lin"), ir.ReLU()))
    assert problems(Model("M", ok)) == []
    for body, wanted in ((Chain(ChildRef("list"), ir.ReLU()), "a ModuleList, which has no forward"),
                         (Chain(ChildRef("lin"), ChildRef("nope")), "calls child 'nope', which does not exist"),
                         (ChildRef("nope"), "calls child 'nope'"),
                         (Chain(ir.LinearLayer(4, 4)), "uses Linear(4, 4) inline, but it has state"),
                         (Chain(ChildRef("list.0")), "")):
        for train in (None, body):
            m = Model("M", replace(ok, body=ok.body if train is not None else body, train_body=train))
            found = problems(m)
            assert found == _unmemoised(m)
            assert (wanted in "\n".join(found)) if wanted else found == [], (body, found)


def test_remembered_leaf_children_still_give_every_key_and_path(stack_ir: Model) -> None:
    """After a Block's members were seen twice, its primitive children's state keys and paths come from the memo:
    the state accounting and the ties see the same keys and paths."""
    swap = "swap-activation{from=relu to=silu}"
    outs = [torchgraft.passes.run(stack_ir, swap).model for _ in range(3)]  # verified each time
    out = outs[-1]
    assert problems(out) == [] == _unmemoised(out)
    assert checkmemo.tables("leaf-children")  # the children were remembered (this test is about them)
    weights = dict(out.weights)
    for bad in (replace(out, weights={**weights, "blocks.3.linear.weight": torch.zeros(4, 5)}),
                replace(out, weights={k: v for k, v in weights.items() if k != "blocks.5.linear.bias"}),
                replace(out, weights={**weights, "blocks.5.linear.extra": torch.zeros(1)}),
                replace(out, ties=(("blocks.2.linear", "blocks.1.linear"),
                                   ("blocks.2.linear.weight", "blocks.2.nope")))):
        found = problems(bad)
        assert found and found == _unmemoised(bad), found
    fine = replace(out, ties=(("blocks.2.linear", "blocks.1.linear"), ("blocks.2.linear.bias", "blocks.0.linear.bias")))
    assert problems(fine) == [] == _unmemoised(fine)

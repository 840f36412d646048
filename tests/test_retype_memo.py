"""``retype`` replays each distinct block once per input signature (``retype.MEMO``): equal nodes share one
module (``build_from_ir(share=True)``) and ``IRReplay`` reuses a block's recorded replay. The types must be the
ones a replay of every block gives (``MEMO = False``), and a pass that breaks one of many equal blocks must
still fail with that block's path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from zoo import import_torchvision

import torchgraft as tg
from torchgraft import ir, passes
from torchgraft import retype as retype_module
from torchgraft.ir.graph import Graph
from torchgraft.ir.nodes import Block
from torchgraft.ir.traverse import walk
from torchgraft.retype import retype
from torchgraft.retype_build import build_from_ir
from torchgraft.retype_replay import IRReplay


def _op_types(model: ir.Model) -> dict[tuple[str, str], str]:
    return {(p, v.name): str(v.type) for p, n in walk(model.root) if isinstance(n, Block)
            for g in (n.body, n.train_body) if isinstance(g, Graph) for v in (*g.inputs, *g.ops)}


def _same_as_full(model: ir.Model, monkeypatch: pytest.MonkeyPatch) -> ir.Model:
    """``retype`` with the memo and without it give the same model (types, ops' types, output type)."""
    fast = retype(model)
    with monkeypatch.context() as m:
        m.setattr(retype_module, "MEMO", False)
        full = retype(model)
    assert fast.types == full.types and fast.types
    assert fast.output_type == full.output_type
    assert _op_types(fast) == _op_types(full)
    assert fast.root == full.root
    return fast


def _bench(blocks: int) -> tuple[ir.Model, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from passes_vs_fx import build

    return tg.capture(build(blocks), (torch.randn(2, 4),)), build


def test_memo_equals_a_full_replay_on_the_benchmark_model_before_and_after_a_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _bench(60)
    assert _same_as_full(model, monkeypatch).types == model.types
    swapped = passes.run(model, "swap-activation{from=relu to=silu}", retype_after=False).model
    _same_as_full(swapped, monkeypatch)


def test_memo_equals_a_full_replay_on_resnet18_and_tiny_bert(monkeypatch: pytest.MonkeyPatch) -> None:
    tv = import_torchvision()
    torch.manual_seed(0)
    resnet = tg.capture(tv.models.resnet18().eval(), (torch.randn(2, 3, 64, 64),))
    assert _same_as_full(resnet, monkeypatch).types == resnet.types
    _same_as_full(passes.run(resnet, "swap-activation{from=relu to=gelu}", retype_after=False).model, monkeypatch)
    transformers: Any = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64)
    bert = tg.capture(transformers.BertModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 10))})
    assert _same_as_full(bert, monkeypatch).types == bert.types


def _narrow(path: str) -> passes.Pass:
    """A pass that narrows the Linear at ``path`` to 3 outputs (weights consistent: ``verify`` passes)."""

    @dataclass(frozen=True)
    class Narrow(passes.Pass):
        name: ClassVar[str] = "narrow"

        def rewrite(self, m: ir.Model) -> tuple[ir.Model, list[passes.Match]]:
            new = ir.replace_at(m, path, ir.Linear(4, 3))
            weights = {**m.weights, path + ".weight": torch.zeros(3, 4), path + ".bias": torch.zeros(3)}
            return new.with_root(new.root, weights=weights), [passes.Match(path, "narrowed")]

    return Narrow()


@pytest.mark.parametrize("broken", [0, 17])
def test_a_pass_that_breaks_one_of_many_equal_blocks_fails_with_the_next_blocks_path(broken: int) -> None:
    """Block ``broken`` now outputs 3 features; the next block, equal to all the others but given a new input
    type, is replayed (never taken from the memo) and fails, named."""
    model, _ = _bench(40)
    with pytest.raises(tg.TorchgraftError, match=rf"pass narrow broke the model's types: .*blocks\.{broken + 1}"):
        passes.run(model, _narrow(f"blocks.{broken}.linear"))


def test_a_changed_type_reaches_everything_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrowing the last block changes its type, its Chain's and the model's output; the blocks before keep
    theirs (remembered), and the whole equals a full replay."""
    model, _ = _bench(40)
    new = passes.run(model, _narrow("blocks.39.linear")).model
    types = {p: str(t) for p, t in new.types}
    assert (types["blocks.38"], types["blocks.39"], types["blocks"], types[""]) == (
        "f32[N, 4]", "f32[N, 3]", "f32[N, 3]", "f32[N, 3]")
    assert str(new.output_type) == "f32[N, 3]"
    _same_as_full(new, monkeypatch)


class _Flip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _Flips(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_Flip(), _Flip(), _Flip())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).reshape(x.shape[0], -1)


def test_a_remembered_result_has_the_shape_and_strides_of_the_replayed_one() -> None:
    """The third flip is the first's (same module, same contiguous input): its result is made again, as a
    transposed view (strides kept), so what follows sees what a replay gives."""
    model = tg.capture(_Flips().eval(), (torch.randn(2, 3, 5),))
    x = torch.empty(11, 3, 5, device="meta")
    outs = []
    for memo in (False, True):
        built = build_from_ir(model, share=memo)
        replay = IRReplay({}, {}, device="cpu", memo=memo)
        with torch.no_grad():
            outs.append(replay.run_node(model.root.children[0][1], built.blocks, "blocks", (x,), {}))
        assert replay.module_types["blocks.2"] == ir.TensorType((11, 5, 3))
    assert (outs[0].shape, outs[0].stride()) == (outs[1].shape, outs[1].stride()) == ((11, 5, 3), (15, 1, 5))

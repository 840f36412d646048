"""``retype`` (run after every pass) keeps symbolic types: several symbols, derived dims, real sizes
that happen to equal a trial size, op types inside Block graphs, and captured transformers models.

Each test checks both ``passes.run`` (which falls back to the pass's own types when a retype fails
before and after) and ``retype`` called directly (which raises instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn
from zoo import import_torchvision

import torchgraft as tg
from torchgraft import ir, passes
from torchgraft.frontends.hand_dims import TrialPlan
from torchgraft.ir.graph import Graph, Input
from torchgraft.ir.nodes import Block
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify
from torchgraft.passes import pipeline as pipeline_module
from torchgraft.retype import retype
from torchgraft.retype_dims import Run, merge_runs, trial_plan

T = ir.TensorType
EMBEDDING = ir.TorchLayer("Embedding", (("num_embeddings", 100), ("embedding_dim", 32)))
SWAP = "swap-activation{from=relu to=gelu}"


def _types(model: ir.Model) -> dict[str, str]:
    return {p: str(t) for p, t in model.types}


def _op_types(model: ir.Model) -> dict[tuple[str, str], str]:
    out = {}
    for path, node in walk(model.root):
        if isinstance(node, Block) and isinstance(node.body, Graph):
            out.update({(path, i.name): str(i.type) for i in node.body.inputs})
            out.update({(path, o.name): str(o.type) for o in node.body.ops})
    return out


def _op_type_list(model: ir.Model) -> list[tuple[str, str]]:
    """(block path, type) of every graph value, sorted: equal across a pass that renames ops (relu -> gelu)."""
    return sorted((path, t) for (path, _), t in _op_types(model).items())


def _swapped(model: ir.Model, pipeline: str = SWAP) -> ir.Model:
    with pytest.MonkeyPatch.context() as m:  # re-inferred, not carried over (see tests/passes/test_swap_types.py)
        m.setattr(pipeline_module, "CARRY_TYPES", False)
        result = passes.run(model, pipeline)
    assert result.reports[0].matches, "the pass must change the model, or retype does not run"
    verify(result.model)
    return result.model


def test_two_symbols_survive_a_pass() -> None:
    model = tg.build(ir.Chain(EMBEDDING, ir.LinearLayer(32, 32), ir.ReLU()), T(("N", "T"), "int64"))
    want = {p: "f32[N, T, 32]" for p in ("", "0", "1", "2")}
    assert _types(model) == want
    for new in (_swapped(model), retype(model)):
        assert _types(new) == want
        assert str(new.output_type) == "f32[N, T, 32]"
    assert isinstance(_swapped(model).root.items[2], ir.Activation)  # type: ignore[attr-defined]


def test_a_real_size_equal_to_a_trial_size_stays_a_number() -> None:
    """Dim 0 of a stack of three branches is 3 (the old single-run replay read it as N)."""
    net = ir.Chain(ir.Parallel(ir.LinearLayer(4, 4), ir.Identity(), ir.ReLU(), combine=ir.Stack(0)), ir.ReLU())
    model = tg.build(net, T(("N", 4)))
    assert str(model.output_type) == "f32[3, N, 4]"
    for new in (_swapped(model), retype(model)):
        assert _types(new) == _types(model)  # the branches ("0.0", ...) keep their types too
        assert _types(new)["0.1"] == "f32[N, 4]" and str(new.output_type) == "f32[3, N, 4]"


def test_trial_sizes_avoid_the_fixed_input_dims() -> None:
    """A fixed dim 11 in dim 0 stays 11: no trial size equals it, and three runs tell it from N."""
    model = tg.build(ir.Chain(ir.LinearLayer(4, 4), ir.ReLU()), T((11, "N", 4)))
    plan = trial_plan([T((11, "N", 4))])
    assert plan is not None and all(11 not in r.values() for r in plan.runs) and len(plan.runs) == 3
    for new in (_swapped(model), retype(model)):
        assert str(new.output_type) == "f32[11, N, 4]"


def test_a_derived_dim_survives_a_pass() -> None:
    model = tg.build(ir.Chain(EMBEDDING, ir.Flatten(0, 1), ir.ReLU()), T(("N", "T"), "int64"))
    want = {"": "f32[N*T, 32]", "0": "f32[N, T, 32]", "1": "f32[N*T, 32]", "2": "f32[N*T, 32]"}
    assert _types(model) == want
    for new in (_swapped(model), retype(model)):
        assert _types(new) == want
        assert str(new.output_type) == "f32[N*T, 32]"


def test_a_dim_with_no_symbolic_form_is_refused_with_the_block_and_value() -> None:
    plan = TrialPlan(("N",), ({"N": 11}, {"N": 13}))
    runs = [Run(T((3,)), {}, {"enc": {"pool": T((n // 2, 3))}}) for n in (11, 13)]
    with pytest.raises(tg.IRError, match=r"^'enc', value 'pool': dim 0 of the output is 5 at N=11; 6 at N=13"):
        merge_runs(plan, runs, "cpu")


class _Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.proj = nn.Linear(32, 8)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.proj(self.emb(ids)))
        return h[:, 1:].transpose(1, 2), h.flatten(0, 1)


def test_op_types_in_block_graphs_and_tuple_outputs_get_both_symbols() -> None:
    captured = tg.capture(_Tagger().eval(), (torch.randint(0, 100, (2, 5)),))
    root = captured.root
    assert isinstance(root, Block) and isinstance(root.body, Graph)
    ids = Input(root.body.inputs[0].name, T(("N", "T"), "int64"))
    two = retype(ir.Model(captured.name, captured.root, (ids,), captured.output_type, captured.types,
                          weights=captured.weights))
    assert str(two.output_type) == "tuple[f32[N, 8, T-1], f32[N*T, 8]]"
    ops = _op_types(two)
    assert ops[("", ids.name)] == "i64[N, T]"
    assert sorted(set(ops.values())) == ["f32[N*T, 8]", "f32[N, 8, T-1]", "f32[N, T, 32]", "f32[N, T, 8]",
                                         "f32[N, T-1, 8]", "i64[N, T]"]
    assert _types(two)["emb"] == "f32[N, T, 32]" and _types(two)["proj"] == "f32[N, T, 8]"
    swapped = _swapped(two, "swap-activation{from=relu to=silu}")
    assert (_types(swapped), swapped.output_type) == (_types(two), two.output_type)
    assert _op_type_list(swapped) == _op_type_list(two)  # the op "relu" is now "silu"


def test_a_captured_transformers_model_keeps_its_types_through_a_pass() -> None:
    import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    model = tg.capture(transformers.BertModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 10))})
    assert str(model.output_type) == "dict[f32[N, 10, 32], f32[N, 32]]"
    before = (_types(model), _op_type_list(model), model.output_type)
    assert _types(model)["embeddings.position_embeddings"] == "f32[1, 10, 32]"  # a real 1 stays 1
    for new in (_swapped(model, "swap-activation{from=gelu to=relu}"), retype(model)):
        assert (_types(new), _op_type_list(new), new.output_type) == before


def test_a_pass_that_breaks_a_type_on_tiny_bert_fails_with_the_node_path() -> None:
    """A rewrite that narrows one Linear (weights consistent, so ``verify`` passes) breaks the residual
    add after it: ``passes.run`` fails naming the pass, the block and the op."""
    import_torchvision()
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    model = tg.capture(transformers.BertModel(cfg).eval(), (), {"input_ids": torch.randint(1, 100, (2, 6))})
    path = "encoder.layer.0.attention.output.dense"

    @dataclass(frozen=True)
    class Narrow(passes.Pass):
        name: ClassVar[str] = "narrow"

        def rewrite(self, m: ir.Model) -> tuple[ir.Model, list[passes.Match]]:
            new = ir.replace_at(m, path, ir.Linear(32, 16))
            weights = {**m.weights, path + ".weight": torch.zeros(16, 32), path + ".bias": torch.zeros(16)}
            return new.with_root(new.root, weights=weights), [passes.Match(path, "narrowed")]

    with pytest.raises(tg.TorchgraftError, match=r"pass narrow broke the model's types: .*"
                                                  r"encoder\.layer\.0\.attention\.output: op 'add' failed"):
        passes.run(model, Narrow())


def test_one_symbol_gets_three_runs_so_a_square_is_not_fitted_by_a_line() -> None:
    """Two runs always fit a line: ``(h @ h.T).flatten()`` was typed ``N*24-143``; three runs see ``N*N``."""

    class Gram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.lin(x))
            return (h @ h.T).flatten()

    model = tg.capture(Gram(), (torch.randn(5, 4),))
    assert str(retype(model).output_type) == "f32[N*N]"
    with pytest.MonkeyPatch.context() as m:  # a swap that keeps every type carries them over (pipeline.CARRY_TYPES)
        m.setattr(pipeline_module, "CARRY_TYPES", False)
        assert str(passes.run(model, "swap-activation{from=relu to=silu}").model.output_type) == "f32[N*N]"

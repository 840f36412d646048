"""Emitted code a person would write (issue 12): loops re-rolled, one class per original class,
no argument noise in child calls, values named from meaning. Measured on tiny transformers
configs and torchvision models (random weights; only the source is compared here: the round
trips of these models are checked in tests/frontends/test_transformers.py and the sweeps).

Goldens of the emitted tiny BERT and Llama are kept for review in tests/golden.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from zoo import import_torchvision

import torchgraft
from tests.backends.test_emit import _golden
from torchgraft.ir.serialize import from_json, to_json

import_torchvision()
transformers = pytest.importorskip("transformers")


def _lines(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip())


def _classes(source: str) -> list[str]:
    return re.findall(r"^class (\w+)\(", source, re.M)


def _llama(layers: int) -> Any:  # noqa: ANN401
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaModel(cfg).eval()


def _source(model: torch.nn.Module, *args: Any, **kwargs: Any) -> str:  # noqa: ANN401
    return torchgraft.emit(torchgraft.capture(model, args, kwargs)).source


IDS = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(0))


def test_llama_depth_does_not_change_the_source() -> None:
    two, eight = _source(_llama(2), input_ids=IDS), _source(_llama(8), input_ids=IDS)
    assert _lines(two) == _lines(eight)
    assert "for layer in self.layers:" in eight and "self.layers[" not in eight
    assert "nn.ModuleList([LlamaDecoderLayer() for _ in range(8)])" in eight
    assert _classes(eight) == ["LlamaAttention", "LlamaMLP", "LlamaRMSNorm", "LlamaDecoderLayer",
                               "LlamaRotaryEmbedding", "LlamaModel"]  # one class per original class, no Variant;
    # SiLUActivation (``return F.silu(input)``) is written nn.SiLU(): backends.torch.act_layers
    assert "sdpa_attention.py" not in eight  # its size comparisons (q_len > 1, q_len == 1) decide nothing here
    _golden("llama_model.py", two)
    _llama_names(two)
    assert "raise ValueError" not in two.split("class LlamaModel(")[0]  # no size guard left in the layers
    assert _lines(two) <= 166  # issue 12 asks for <= 130: the attention body and mask building are still long
    assert "key = k_embed.repeat_interleave(2, dim=1)" in two  # repeat_kv, written as what it computes
    # (189 before the rotary inv_freq was built by its formula, with no constants file (const_values.Rope),
    # and SiLUActivation became nn.SiLU() (act_layers), and graph bodies were simplified (ir.idioms))
    # (227 before children stopped repeating their parents' guards; 207 before guards that decide nothing,
    # and the mask code's batch-1 expand, were relaxed: frontends.guard_relax; 195 before one guard refused
    # every way of asking for a cache)


def test_bert_reads_like_the_original() -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    source = _source(transformers.BertModel(cfg).eval(), input_ids=IDS)
    attention = source.split("class BertSelfAttention(")[1].split("\nclass ")[0]
    for name in ("query", "key", "value"):  # names from the child that produced them
        assert re.search(rf"\b{name} = self\.{name}\(hidden_states\)", attention), attention
    assert "batch, seq_len = hidden_states.shape[:2]" in attention  # sizes named for what they are
    assert "def forward(self, hidden_states: Tensor, attention_mask: Tensor)" in attention  # only real inputs
    assert "cache=None" not in source and "position_ids=None" not in source.split("class BertModel(")[0]
    assert "for block in self.layer:" in source
    assert not any("Variant" in c for c in _classes(source))
    _golden("bert_model.py", source)
    assert "class GELUActivation" not in source and "nn.GELU()" in source  # backends.torch.act_layers
    assert _lines(source) <= 163  # issue 12 asks for <= 140 (170 before GELUActivation became nn.GELU(),
    # with simplified graph bodies at the same time; 203 before children stopped repeating guards;
    # 182 before sdpa's is_causal comparison stopped being guarded; 179 before its arange and zeros buffers
    # were written as such, with no constants file: backends.torch.const_values)


def test_gpt2_loop_and_classes() -> None:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    source = _source(transformers.GPT2LMHeadModel(cfg).eval(), input_ids=IDS, use_cache=False)
    assert re.search(r"for layer in self\.h:\n +\w+ = layer\(", source)
    assert _classes(source) == ["Conv1D", "GPT2Attention", "NewGELUActivation", "GPT2MLP", "GPT2Block", "GPT2Model",
                                "GPT2LMHeadModel"]
    assert ".size(0), -1" not in source  # no same-shape reshape left (sdpa output to its own shape)
    assert _lines(source) <= 157  # issue 12 asks for <= 120 (169 before graph bodies were simplified at
    # emission: sizes read once, same-shape reshapes, repeated contiguous() and `[:, 0:, :]` dropped, ir.idioms;
    # 184 before children stopped repeating guards; 176
    # since `use_cache: bool | None = None` says the truth and wraps the signature; 169 since the mask code's
    # batch-1 expand and sdpa's is_causal comparison are not guarded)


def test_resnet50_stays_short(torchvision: Any) -> None:  # noqa: ANN401
    source = _source(torchvision.models.resnet50().eval(), torch.randn(1, 3, 64, 64))
    assert _lines(source) <= 80
    assert _classes(source) == ["Bottleneck", "ResNet"]


def test_densenet121_loops_and_one_block_class(torchvision: Any) -> None:  # noqa: ANN401
    source = _source(torchvision.models.densenet121().eval(), torch.randn(1, 3, 64, 64))
    assert _lines(source) <= 100  # was 922, with a class per block size
    assert _classes(source) == ["_DenseLayer", "_DenseBlock", "_Transition", "DenseNet"]  # nn.Sequential subclass
    assert "for layer in self.children():\n            features.append(layer(features))" in source
    assert 'self.add_module(f"denselayer{i + 1}", _DenseLayer(in_channels + 32 * i))' in source
    assert "_DenseBlock(24, 256)" in source


def _offset(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    x = x * scale  # a helper's `x`: in the forward, `x` is the input, so this value is not called `x`
    shifted = x + 1
    return shifted


class _Named(torch.nn.Module):
    """Values with names in the source: a child's output, an unpacking, a multi-line statement whose
    intermediates (``gate.sigmoid() * up``) are not the assigned value, a helper's locals."""

    def __init__(self, fallback: bool = False) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 16)
        self.fallback = fallback

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback:
            assert len(x.shape) == 2  # fx cannot take len() of a Proxy: the fallback trace records this forward
        hidden = self.proj(x)
        gate, up = hidden.chunk(2, dim=-1)
        mixed = (gate.sigmoid() * up) + (
            up.tanh())
        moved = _offset(mixed, gate)
        return moved * mixed + hidden.sum(-1, keepdim=True)


@pytest.mark.parametrize("fallback", [False, True], ids=["fx", "trace"])
def test_values_take_the_names_of_the_source_variables(fallback: bool) -> None:
    torch.manual_seed(0)
    model = _Named(fallback).eval()
    x = torch.randn(3, 8)
    captured = torchgraft.capture(model, (x,))
    assert captured.root.method == ("trace" if fallback else "fx")
    torchgraft.ir.verify(captured)
    hints = {op.source_var: op for op in captured.root.body.ops if op.source_var}
    assert set(hints) == {"hidden", "gate", "up", "mixed", "shifted"}  # not the helper's `x`, nor `moved`
    assert hints["mixed"].name.startswith("add")  # the value assigned, not a part of it (``gate.sigmoid() * up``)
    assert hints["hidden"].target == torchgraft.ir.ChildCall("proj")
    back = from_json(to_json(captured))
    assert [op.source_var for op in back.root.body.ops] == [op.source_var for op in captured.root.body.ops]
    code = torchgraft.emit(captured)
    for name in ("hidden", "gate", "up", "mixed"):  # values used once are written inline, without a name
        assert re.search(rf"^ +{name} = ", code.source, re.M), code.source
    assert not re.search(r"^ +x = ", code.source, re.M)
    emitted = code.materialize()
    torch.testing.assert_close(emitted(x), model(x), rtol=0, atol=1e-6)
    for other in (torch.randn(5, 8), torch.randn(1, 8)):
        torch.testing.assert_close(emitted(other), model(other), rtol=0, atol=1e-6)


def _llama_names(source: str) -> None:
    """Values in the emitted Llama named as transformers names them (issue 12: names from meaning)."""
    attention = source.split("class LlamaAttention(")[1].split("\nclass ")[0]
    for name in ("cos", "sin", "q_embed", "k_embed", "key", "value"):  # transformers' own names
        assert re.search(rf"^ +{name} = ", attention, re.M), attention
    # ``attn_output`` is passed over where it would wrap a line ``out`` keeps on one (forward.graph_lines),
    # but the attention's result never takes the name of what it was computed from
    assert not re.search(r"^ +(q|q_embed|key|value|query) = F\.scaled_dot_product_attention", attention, re.M)
    assert not re.search(r"^ +hidden_states = ", attention, re.M)  # repeat_kv's local is not the input's name
    assert "q = self.q_proj(hidden_states)" in attention  # a child's name still comes first
    model = source.split("class LlamaModel(")[1]
    for name in ("inputs_embeds", "position_ids", "causal_mask"):
        assert re.search(rf"^ +{name} = ", model, re.M), model

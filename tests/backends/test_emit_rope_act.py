"""Two emitter spellings a person would write (issue 12):

- ``backends.torch.const_values.Rope``: transformers' default rotary inverse frequencies are built by their
  formula (``1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)``), bit for bit, so no constants file;
- ``backends.torch.act_layers``: an activation wrapper class (``SiLUActivation``: ``return F.silu(input)``)
  is the torch layer it is (``nn.SiLU()``), with no class of its own.

Equivalence is checked on the emitted model: every buffer bit for bit, the state_dict keys exactly, the
outputs within 1e-5 (absolute and relative) at the captured batch and length and at others.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from zoo import import_torchvision

import torchgraft
from torchgraft.backends.torch.act_layers import layer_activations
from torchgraft.backends.torch.const_values import Formula, Rope, constructor, rope
from torchgraft.backends.torch.roundtrip import first_difference, normal_form
from torchgraft.ir.graph import GetAttr, Graph, Op

import_torchvision()
transformers = pytest.importorskip("transformers")

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hf_inv_freq(base: float, dim: int) -> torch.Tensor:
    """transformers' ``_compute_default_rope_parameters``."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))


@pytest.mark.parametrize("base", [10000.0, 500000.0, 1000000.0, 5000000.0])
@pytest.mark.parametrize("dim", [4, 8, 64, 80, 128, 7])
def test_rope_formula_is_recognised_bit_for_bit(base: float, dim: int) -> None:
    t = _hf_inv_freq(base, dim)
    found = rope(t)
    assert found is not None and found.dim == dim and found.base == base  # the round base, not a neighbour
    value = found.value()
    assert value.dtype == t.dtype and torch.equal(value, t)
    expr = constructor(t)
    assert isinstance(expr, Formula) and expr.text == found.text()
    assert found.text().startswith(f"1.0 / {found.base!r} ** (torch.arange(0, {dim}, 2).float() / {dim})")


@pytest.mark.parametrize("value", [
    _hf_inv_freq(10000.0, 8) / 2.0,  # linear scaling: the first item is not 1
    _hf_inv_freq(10000.0, 8).double(),  # another dtype
    _hf_inv_freq(10000.0, 8).half(),
    _hf_inv_freq(10000.5, 8),  # a base no integer reproduces
    torch.nextafter(_hf_inv_freq(10000.0, 8), torch.tensor(1.0)),  # the last bit off (the first item stays 1)
    torch.tensor([1.0]),  # one item: any base
    torch.tensor([1.0, 0.5, 0.25]),  # 1 / 8 ** (arange(0, 6, 2) / 6), but 8 is no rope's base
])
def test_other_tensors_are_not_a_rope(value: torch.Tensor) -> None:
    assert rope(value) is None
    assert not isinstance(constructor(value), Formula)


def test_rope_text_and_value_are_one_expression() -> None:
    r = Rope(10000, 8)
    assert r.text() == "1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)"
    assert torch.equal(r.value(), 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8))  # the text, typed in
    assert Rope(10000.0, 8).text() == "1.0 / 10000.0 ** (torch.arange(0, 8, 2).float() / 8)"


class _Rotary(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", _hf_inv_freq(base, dim), persistent=False)
        self.register_buffer("original_inv_freq", _hf_inv_freq(base, dim).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[..., None] * self.inv_freq + self.original_inv_freq).sum(-1)


class _Rotaries(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.rotary = nn.ModuleList([_Rotary(d) for d in dims])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((r(x) for r in self.rotary), x)


@pytest.mark.parametrize(("dims", "written"), [((8, 8), True), ((8, 16, 8), False)])
def test_one_class_writes_one_formula(dims: tuple[int, ...], written: bool) -> None:
    """Instances that agree share the formula in ``__init__``; where they differ, the values are loaded from
    the file (a formula passed as a constructor argument would be one default tensor for all instances)."""
    model, x = _Rotaries(*dims), torch.randn(3, 5)
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    assert ("inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)" in code.source) is written
    assert ("_load_constants(model)" in code.source) is not written
    emitted = code.materialize()
    assert list(dict(emitted.named_buffers())) == list(dict(model.named_buffers()))  # none shared
    for (name, got), want in zip(emitted.named_buffers(), model.buffers(), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want), name
    torch.testing.assert_close(emitted(x), model(x), rtol=0, atol=0)


def _llama(**extra: Any) -> nn.Module:  # noqa: ANN401
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, **extra)
    return transformers.LlamaModel(cfg).eval()


def _bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _same_model(model: nn.Module, emitted: nn.Module) -> None:
    """State_dict keys exactly, every buffer (non-persistent ones too) bit for bit, outputs within TOL at the
    captured shape and at another batch size and length."""
    assert list(emitted.state_dict()) == list(model.state_dict())
    buffers = dict(model.named_buffers())
    assert dict(emitted.named_buffers()).keys() == buffers.keys()
    for name, buffer in emitted.named_buffers():
        assert buffer.dtype == buffers[name].dtype and torch.equal(buffer, buffers[name]), name
    with torch.no_grad():
        for batch, length in ((2, 7), (3, 11), (1, 5)):
            ids = _ids(batch, length, seed=batch)
            want, got = model(input_ids=ids), emitted(input_ids=ids)
            torch.testing.assert_close(got["last_hidden_state"], want["last_hidden_state"], **TOL)


def test_llama_builds_its_rotary_buffers_and_uses_nn_silu(tmp_path: Path) -> None:
    model = _llama()
    code = torchgraft.emit(torchgraft.capture(model, (), {"input_ids": _ids(2, 7)}))
    src = code.source
    assert "inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)" in src
    assert 'self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)' in src
    assert "_load_constants" not in src and "constants.safetensors" not in src and not code.constants
    assert "class SiLUActivation" not in src and "self.act_fn = nn.SiLU()" in src
    code.save(tmp_path)
    assert not (tmp_path / "constants.safetensors").exists()
    emitted = code.materialize().eval()
    _same_model(model, emitted)
    assert emitted.rotary_emb.inv_freq.data_ptr() != emitted.rotary_emb.original_inv_freq.data_ptr()


def test_bert_uses_nn_gelu() -> None:
    model = _bert()
    code = torchgraft.emit(torchgraft.capture(model, (), {"input_ids": _ids(2, 7)}))
    assert "class GELUActivation" not in code.source and "self.intermediate_act_fn = nn.GELU()" in code.source
    _same_model(model, code.materialize().eval())


def test_a_scaled_rope_stays_in_the_constants_file(tmp_path: Path) -> None:
    model = _llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    code = torchgraft.emit(torchgraft.capture(model, (), {"input_ids": _ids(2, 7)}))
    assert "_load_constants(model)" in code.source and "torch.arange(0, 8, 2)" not in code.source
    code.save(tmp_path)
    assert sorted(load_file(str(tmp_path / "constants.safetensors"))) == ["rotary_emb.inv_freq",
                                                                          "rotary_emb.original_inv_freq"]
    _same_model(model, code.materialize().eval())


class _NewGELU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = transformers.activations.NewGELUActivation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def test_new_gelu_stays_a_class() -> None:
    x = torch.randn(64, 8) * 4
    model = _NewGELU().eval()
    assert not torch.equal(model(x), F.gelu(model.fc(x), approximate="tanh"))  # a formula, not nn.GELU's kernel
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    assert "class NewGELUActivation(nn.Module):" in code.source and "nn.GELU" not in code.source
    torch.testing.assert_close(code.materialize()(x), model(x), rtol=0, atol=0)


class _Silu(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.silu(input)


class _GeluTanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = functools.partial(F.gelu, approximate="tanh")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(input)


class _Sigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sigmoid()


class _Gelu(nn.Module):
    """One class, two activations: its instances compute different things, so it stays a class."""

    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


class _Wrappers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.silu, self.gelu_tanh, self.sigmoid = _Silu(), _GeluTanh(), _Sigmoid()
        self.seq = nn.Sequential(nn.Linear(8, 8), _Silu())
        self.exact, self.tanh = _Gelu("none"), _Gelu("tanh")
        self.by_keyword = _Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        x = self.silu(x) + self.gelu_tanh(x) * self.sigmoid(x)
        x = self.seq(x) + self.exact(x) - self.tanh(x)
        return x + self.by_keyword(x=x)


def test_wrappers_become_torch_layers_exactly() -> None:
    torch.manual_seed(0)
    model = _Wrappers().eval()
    x = torch.randn(3, 8)
    captured = torchgraft.capture(model, (x,))
    code = torchgraft.emit(captured)
    src = code.source
    assert "self.silu = nn.SiLU()" in src and 'self.gelu_tanh = nn.GELU(approximate="tanh")' in src
    assert "nn.Sequential(nn.Linear(8, 8), nn.SiLU())" in src
    assert "class _Gelu(nn.Module):" in src  # two instances, two activations
    assert "class _Sigmoid(nn.Module):" in src and "self.sigmoid = _Sigmoid()" in src  # one is called by keyword
    assert "class _Silu" not in src and "class _GeluTanh" not in src
    emitted = code.materialize()
    assert list(emitted.state_dict()) == list(model.state_dict())
    for mode in (False, True):  # eval and train: no dropout here, so bit for bit in both
        model.train(mode), emitted.train(mode)
        for inp in (x, torch.randn(5, 8), torch.randn(2, 4, 8)):
            torch.testing.assert_close(emitted(inp), model(inp), rtol=0, atol=0)
    assert first_difference(normal_form(captured), normal_form(torchgraft.capture(emitted.eval(), (x,)))) is None


def _kinds(model: torchgraft.ir.Model) -> dict[str, str]:
    return {name: type(child).__name__ for name, child in model.root.children}  # type: ignore[attr-defined]


def test_tied_or_attribute_read_wrappers_stay_blocks() -> None:
    torch.manual_seed(0)
    captured = torchgraft.capture(_Wrappers().eval(), (torch.randn(3, 8),))
    assert isinstance(captured.root.body, Graph)
    swapped = _kinds(layer_activations(captured))
    assert swapped["silu"] == swapped["gelu_tanh"] == "Activation"
    assert swapped["exact"] == swapped["by_keyword"] == swapped["sigmoid"] == "Block"  # a class called by keyword
    tied = replace(captured, ties=(("silu", "gelu_tanh"),))
    assert _kinds(layer_activations(tied))["silu"] == _kinds(layer_activations(tied))["gelu_tanh"] == "Block"
    body = captured.root.body
    read = captured.with_root(replace(captured.root, body=Graph(  # ``self.gelu_tanh`` handed on as an attribute
        body.inputs, (Op("probe", GetAttr("gelu_tanh")), *body.ops), body.output)))
    kinds = _kinds(layer_activations(read))
    assert kinds["gelu_tanh"] == "Block" and kinds["silu"] == "Activation"

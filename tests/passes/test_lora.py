"""``lora``: LoRALinear adapters around Linear layers; outputs unchanged, original checkpoint loads."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.ir.nodes import Block
from torchgraft.ir.primitives import Linear, TorchLayer
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify
from torchgraft.passes import REGISTRY, run
from torchgraft.passes.lora import LORA_CLASS, LoRA, LoRAError, load_original

MLP = "encoder.layers.*.mlp.*"


@pytest.fixture(scope="module")
def vit(torchvision: Any) -> tuple[nn.Module, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    net = torchvision.models.vit_b_16().eval()
    nn.init.normal_(net.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    x = torch.randn(1, 3, 224, 224)
    return net, x, torchgraft.capture(net, (x,))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(b, a, atol=1e-5 * float(a.abs().max()), rtol=0)


def test_lora_vit_mlp_outputs_equal_and_original_checkpoint_loads(vit: Any) -> None:
    net, x, model = vit
    result = run(model, [LoRA(where=MLP, r=4, alpha=8.0, dropout=0.1)])
    new = result.model
    verify(new)
    rep = result.reports[0]
    assert len(rep.matches) == 24  # 12 encoder layers x (mlp.0, mlp.3)
    assert rep.keys_renamed["encoder.layers.encoder_layer_0.mlp.0.weight"] == \
        "encoder.layers.encoder_layer_0.mlp.0.base.weight"
    assert rep.keys_renamed["encoder.layers.encoder_layer_11.mlp.3.bias"] == \
        "encoder.layers.encoder_layer_11.mlp.3.base.bias"
    assert len(rep.keys_renamed) == 48 and not rep.keys_removed
    assert sorted(rep.keys_added)[:2] == ["encoder.layers.encoder_layer_0.mlp.0.lora_A.weight",
                                          "encoder.layers.encoder_layer_0.mlp.0.lora_B.weight"]
    assert rep.params_after - rep.params_before == 12 * 2 * (4 * 768 + 4 * 3072)
    w = new.weights
    assert w["encoder.layers.encoder_layer_0.mlp.0.lora_A.weight"].shape == (4, 768)
    assert w["encoder.layers.encoder_layer_0.mlp.3.lora_A.weight"].abs().sum() > 0
    assert torch.count_nonzero(w["encoder.layers.encoder_layer_0.mlp.3.lora_B.weight"]) == 0
    assert "heads.head.weight" in w  # not selected

    code = torchgraft.emit(new)
    assert "class LoRALinear(nn.Module)" in code.source
    assert "self.lora_B(self.lora_A(self.lora_dropout(x))) * 2.0" in code.source
    with torch.no_grad():
        ref = net(x)
        _close(ref, code.materialize().eval()(x))

    fresh = code.materialize(load_weights=False).eval()  # build(): lora_B is torch-initialised, not zero
    with pytest.raises(RuntimeError, match="Missing key"):
        load_original(fresh, net.state_dict(), {})
    load_original(fresh, net.state_dict(), rep.keys_renamed)
    with torch.no_grad():
        _close(ref, fresh(x))


def test_lora_default_every_linear_and_attention_note(vit: Any) -> None:
    _, _, model = vit
    lora = LoRA(r=2)
    new, matches = lora.rewrite(model)
    verify(new)
    assert len(matches) == 25 and matches[-1].path == "heads.head"
    nodes = dict(walk(new.root))
    head = nodes["heads.head"]
    assert isinstance(head, Block) and head.cls == LORA_CLASS
    assert [n for n, _ in head.children] == ["base", "lora_A", "lora_B"]  # dropout=0 adds no layer
    assert head.child("base") == Linear("Linear", 768, 1000)
    assert lora.key_map(model, new)["heads.head.weight"] == "heads.head.base.weight"
    # attention: nn.MultiheadAttention's projections are fused parameters, not Linears
    assert any("MultiheadAttention" in n and "in_proj_weight" in n for n in lora.notes(model))
    assert isinstance(nodes["encoder.layers.encoder_layer_0.self_attention"], TorchLayer)
    # applying it again wraps nothing new: adapters' own layers are excluded
    again, more = LoRA(r=2).rewrite(new)
    assert again is new and more == []


def test_lora_refuses_attention_selected_explicitly(vit: Any) -> None:
    _, _, model = vit
    with pytest.raises(LoRAError, match="in_proj_weight"):
        LoRA(where="*.self_attention").rewrite(model)


def test_lora_seeded_init_and_options() -> None:
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(4, 6)
    model = torchgraft.capture(net, (x,))
    a, _ = LoRA(r=2, seed=1).rewrite(model)
    b, _ = LoRA(r=2, seed=1).rewrite(model)
    c, _ = LoRA(r=2, seed=2).rewrite(model)
    assert torch.equal(a.weights["0.lora_A.weight"], b.weights["0.lora_A.weight"])
    assert not torch.equal(a.weights["0.lora_A.weight"], c.weights["0.lora_A.weight"])
    one, _ = LoRA(where="2", r=3, alpha=3.0).rewrite(model)  # scaling 1: no multiply
    source = torchgraft.emit(one).source
    assert "self.lora_B(self.lora_A(x))" in source and "* 1.0" not in source
    with torch.no_grad():
        assert torch.equal(torchgraft.emit(one).materialize().eval()(x), net(x))
    drop, _ = LoRA(r=2, dropout=0.5).rewrite(model)
    verify(drop)
    adapted = torchgraft.emit(drop).materialize().train()
    with torch.no_grad():  # lora_B is zero: equal even with the adapter's dropout active
        assert torch.equal(adapted(x), net(x))
    for bad in (LoRA(r=0), LoRA(dropout=1.0)):
        with pytest.raises(LoRAError):
            bad.rewrite(model)


def test_lora_text_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, LoRA.name, LoRA)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model = torchgraft.capture(net, (torch.randn(2, 6),))
    result = run(model, "lora{where=kind:Linear r=2 alpha=4 dropout=0.05}")
    assert [m.path for m in result.reports[0].matches] == ["0", "2"]
    assert result.reports[0].keys_renamed == {"0.weight": "0.base.weight", "0.bias": "0.base.bias",
                                              "2.weight": "2.base.weight", "2.bias": "2.base.bias"}

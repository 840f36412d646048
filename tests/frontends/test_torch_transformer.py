"""``nn.Transformer`` and its parts are kept whole: rebuilt from recovered constructor arguments.

Checked: the emitted model (fresh process, torchgraft not importable) equals eager at the example
and at another batch and length, with padding masks and a causal mask; train mode (dropout) draws
the same random numbers; the original state_dict loads strict; a layer whose settings the
constructor cannot express stays opaque (refused at emit, never rebuilt wrong); swap-activation
reaches the activation argument.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_check import run_calls_fresh
from torch import nn

import torchgraft
from torchgraft.errors import EmitError

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


class Seq2Seq(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.transformer = nn.Transformer(16, 2, 2, 1, 32, batch_first=True, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(16, 50)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.size(1))
        y = self.transformer(self.emb(src), self.emb(tgt), tgt_mask=causal, src_key_padding_mask=pad,
                             tgt_is_causal=True)
        return self.head(y)


def _call(batch: int, src_len: int, tgt_len: int) -> tuple[tuple[torch.Tensor, ...], dict[str, object]]:
    pad = torch.zeros(batch, src_len, dtype=torch.bool)
    pad[-1, src_len // 2:] = True  # the last sequence is right-padded
    return (torch.randint(0, 50, (batch, src_len)), torch.randint(0, 50, (batch, tgt_len)), pad), {}


VARIANTS = {
    "relu": {},
    "gelu-name": {"activation": "gelu", "norm_first": True},
    "gelu-module": {"activation": nn.GELU()},
    "no-bias": {"bias": False, "dropout": 0.2, "layer_norm_eps": 1e-6},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformer_round_trip(variant: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(**VARIANTS[variant]).eval()
    calls = [_call(2, 6, 5), _call(3, 9, 4)]
    with torch.no_grad():
        refs = [model(*args) for args, _ in calls]
    ir_model = torchgraft.capture(model, *calls[0])
    assert ir_model.report.methods["transformer"] == "leaf"
    assert not ir_model.report.opaque, ir_model.report.summary()
    code = torchgraft.emit(ir_model)
    assert "nn.Transformer(" in code.source
    code.save(tmp_path)
    build = code.materialize(load_weights=False, device="meta")
    build.load_state_dict(model.state_dict(), strict=True, assign=True)
    assert list(build.state_dict()) == list(model.state_dict())
    outs, _ = run_calls_fresh(tmp_path, calls)
    for i, ref in enumerate(refs):
        torch.testing.assert_close(outs[f"c{i}"], ref, atol=1e-5, rtol=1e-5)


def test_train_mode_draws_the_same_dropout() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(dropout=0.3)
    args, _ = _call(2, 6, 5)
    emitted = torchgraft.emit(torchgraft.capture(model.eval(), args)).materialize().train()
    model.train()
    torch.manual_seed(1)
    ref = model(*args)
    torch.manual_seed(1)
    torch.testing.assert_close(emitted(*args), ref, atol=1e-6, rtol=1e-6)


def test_encoder_stack_with_norm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, activation="gelu", batch_first=True)
    model = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(16), enable_nested_tensor=False).eval()
    calls = [((torch.randn(2, 5, 16),), {}), ((torch.randn(4, 9, 16),), {})]
    code = torchgraft.emit(torchgraft.capture(model, *calls[0]))
    assert "nn.TransformerEncoderLayer(" in code.source and "norm=nn.LayerNorm(" in code.source
    code.save(tmp_path)
    outs, _ = run_calls_fresh(tmp_path, calls)
    with torch.no_grad():
        for i, (args, _) in enumerate(calls):
            torch.testing.assert_close(outs[f"c{i}"], model(*args), atol=1e-5, rtol=1e-5)


def test_settings_the_constructor_cannot_express_stay_opaque() -> None:
    """Changing one dropout after construction, or a custom activation function: never rebuilt wrong."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    layer.dropout1.p = 0.3
    other = nn.TransformerEncoderLayer(16, 2, 32, activation=lambda x: x * 2, batch_first=True)
    for mod in (layer, other):
        ir_model = torchgraft.capture(mod.eval(), (torch.randn(2, 5, 16),))
        assert "" in ir_model.report.opaque, ir_model.report.summary()
        with pytest.raises(EmitError, match="TransformerEncoderLayer"):
            torchgraft.emit(ir_model)


def test_swap_activation_reaches_the_activation_argument() -> None:
    torch.manual_seed(0)
    model = nn.Transformer(16, 2, 1, 1, 32, activation=nn.GELU(), batch_first=True).eval()
    a, b = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    result = torchgraft.passes.run(torchgraft.capture(model, (a, b)), "swap-activation{from=gelu to=silu}")
    assert len(result.reports[0].matches) == 1
    swapped = torchgraft.emit(result.model).materialize().eval()
    ref = nn.Transformer(16, 2, 1, 1, 32, activation=nn.SiLU(), batch_first=True).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(swapped(a, b), ref(a, b), atol=1e-6, rtol=1e-6)

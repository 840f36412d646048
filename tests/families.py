"""The model families of the coverage table: each a tiny model (random weights, fixed seed) and its calls.

A ``Case`` builds its model and gives the calls to check: the first call is the capture example, the
others differ in batch size or length (and must match too, or be refused by a guard). Used by
``tests/test_family_sweep.py`` (one slow test per case) and ``benchmarks/coverage.py`` (the README table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from zoo import import_torchvision, register_reference_nms

Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One model of a family: ``build()`` returns the model in eval mode, ``calls()`` the calls to check."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    calls: Callable[[], list[Call]]
    slow: bool = True
    setup: Callable[[], Any] | None = field(default=None, compare=False)
    tolerance: float = 1e-4
    """Outputs match within ``tolerance`` x max|eager output|."""


# ---------------------------------------------------------------- toy modules


class Recurrent(nn.Module):
    """LSTM (2 layers, bidirectional, batch_first) -> GRU -> RNN, using the final hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1)
        self.gru = nn.GRU(16, 8, batch_first=True)
        self.rnn = nn.RNN(8, 8, nonlinearity="relu", batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, (h, _) = self.lstm(x)
        y, _ = self.gru(y)
        y, h2 = self.rnn(y)
        return y, h[-1] + h2[0]


class Parametrized(nn.Module):
    """weight_norm, spectral_norm and orthogonal parametrizations on Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        from torch.nn.utils import parametrizations as P

        self.a = P.weight_norm(nn.Linear(4, 8))
        self.b = P.spectral_norm(nn.Linear(8, 8))
        self.c = P.orthogonal(nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(self.a(x))))


class LegacyWeightNorm(nn.Module):
    """``torch.nn.utils.weight_norm`` (the pre-hook form, keys ``weight_g``/``weight_v``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.utils.weight_norm(nn.Conv1d(4, 8, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


class ExtraState(nn.Module):
    """A module whose state_dict carries ``_extra_state`` (a JSON-able dict its forward depends on)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.scale = 2.0

    def get_extra_state(self) -> dict[str, float]:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.scale = state["scale"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


class Scorer(nn.Module):
    """A child with no forward: the parent calls its ``score`` method."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * self.w * b).sum(-1)


class MethodOnly(nn.Module):
    """Calls a child only through a method other than ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.helper = Scorer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.helper.score(self.proj(x), x)


def _compiled() -> nn.Module:
    return torch.compile(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))  # type: ignore[return-value]


def _randn(*shapes: tuple[int, ...]) -> Callable[[], list[Call]]:
    return lambda: [((torch.randn(*s),), {}) for s in shapes]


TOYS = [
    Case("lstm-gru-rnn", "recurrent", Recurrent, _randn((2, 5, 4), (3, 7, 4)), slow=False),
    Case("parametrizations", "parametrizations", Parametrized, _randn((2, 4), (3, 4)), slow=False),
    Case("legacy-weight-norm", "parametrizations", LegacyWeightNorm, _randn((2, 4, 6), (3, 4, 9)), slow=False),
    Case("extra-state", "extra state", ExtraState, _randn((2, 4), (3, 4)), slow=False),
    Case("torch.compile", "compiled", _compiled, _randn((2, 4), (3, 4)), slow=False),
    Case("method-only child", "method-only", MethodOnly, _randn((2, 4), (3, 4)), slow=False),
    Case("nn.Transformer", "nn.Transformer",
         lambda: nn.Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=1,
                                dim_feedforward=32, dropout=0.1),
         lambda: [((torch.randn(5, 2, 16), torch.randn(4, 2, 16)), {}),
                  ((torch.randn(7, 3, 16), torch.randn(6, 3, 16)), {})]),
    Case("nn.TransformerEncoder", "nn.Transformer",
         lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                       enable_nested_tensor=False),
         _randn((2, 5, 16), (3, 8, 16))),
]


# ---------------------------------------------------------------- transformers


def _ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(1, 100, (batch, length))


def _tf_case(name: str, config: str, model: str, kind: str = "decoder", **cfg: Any) -> Case:
    def build() -> nn.Module:
        import transformers

        import_torchvision()
        return getattr(transformers, model)(getattr(transformers, config)(**cfg))

    def calls() -> list[Call]:
        out: list[Call] = []
        for batch, length in ((2, 7), (3, 11)):
            if kind == "encoder-decoder":
                out.append(((), {"input_ids": _ids(batch, length), "decoder_input_ids": _ids(batch, length - 2)}))
            elif kind == "speech":
                out.append(((), {"input_features": torch.randn(batch, 16, 2 * cfg["max_source_positions"]),
                                 "decoder_input_ids": _ids(batch, length - 2)}))
            else:
                out.append(((), {"input_ids": _ids(batch, length)}))
        return out

    return Case(name, "transformers " + kind, build, calls)


_SMALL = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)

TRANSFORMERS = [
    _tf_case("Llama", "LlamaConfig", "LlamaForCausalLM", **_SMALL),
    _tf_case("Mistral", "MistralConfig", "MistralModel", **_SMALL),
    _tf_case("Qwen2", "Qwen2Config", "Qwen2Model", **_SMALL),
    _tf_case("Gemma", "GemmaConfig", "GemmaModel", head_dim=8, **_SMALL),
    _tf_case("Phi", "PhiConfig", "PhiModel", **_SMALL),
    _tf_case("OPT", "OPTConfig", "OPTModel", vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
             num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64),
    _tf_case("Mixtral", "MixtralConfig", "MixtralModel", num_local_experts=4, num_experts_per_tok=2, **_SMALL),
    _tf_case("Qwen2-MoE", "Qwen2MoeConfig", "Qwen2MoeModel", num_experts=4, num_experts_per_tok=2,
             moe_intermediate_size=32, shared_expert_intermediate_size=32, **_SMALL),
    _tf_case("Mamba", "MambaConfig", "MambaModel", vocab_size=100, hidden_size=32, state_size=8,
             num_hidden_layers=2),
    _tf_case("T5", "T5Config", "T5Model", "encoder-decoder", vocab_size=100, d_model=32, d_kv=8, d_ff=64,
             num_layers=1, num_heads=4),
    _tf_case("BART", "BartConfig", "BartModel", "encoder-decoder", vocab_size=100, d_model=32, encoder_layers=1,
             decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
             decoder_ffn_dim=64, max_position_embeddings=64),
    _tf_case("Whisper", "WhisperConfig", "WhisperModel", "speech", vocab_size=100, d_model=32, encoder_layers=1,
             decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
             decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, max_target_positions=32,
             pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0),
]


# ---------------------------------------------------------------- torchvision

_TV_INPUT = {"detection": (3, 128, 128), "segmentation": (3, 64, 64), "video": (3, 4, 32, 32),
             "optical_flow": (3, 128, 128)}


def _tv_case(group: str, name: str) -> Case:
    def build() -> nn.Module:
        tv = import_torchvision()
        kwargs: dict[str, Any] = {"weights": None}
        if group in ("detection", "segmentation"):
            kwargs["weights_backbone"] = None
        if group == "detection":
            register_reference_nms()
            # random weights score every box low: keep them all, so the comparison sees real boxes
            kwargs["box_score_thresh" if "rcnn" in name else "score_thresh"] = 0.0
            if not name.startswith("ssd"):  # R-CNNs, RetinaNet, FCOS resize to 800 px by default: keep it small
                kwargs.update(min_size=128, max_size=192)
        return tv.models.get_model(name, **kwargs)

    def calls() -> list[Call]:
        shape = _TV_INPUT[group]
        if group == "detection":
            return [(([torch.rand(*shape)],), {}), (([torch.rand(3, 160, 128), torch.rand(*shape)],), {})]
        if group == "optical_flow":
            return [((torch.rand(1, *shape), torch.rand(1, *shape)), {}),
                    ((torch.rand(2, *shape), torch.rand(2, *shape)), {})]
        if name.startswith(("mvit", "s3d")):
            shape = (3, 16, 224, 224)  # their pooling needs the full clip size
        return [((torch.rand(1, *shape),), {}), ((torch.rand(2, *shape),), {})]

    # roi_align runs its Python source in both (tests/zoo.register_reference_nms); the rest: conv kernel rounding
    tolerance = 1e-3 if group == "detection" else 1e-4
    return Case(name, "torchvision " + group.replace("_", " "), build, calls, tolerance=tolerance)


def torchvision_cases() -> list[Case]:
    """Every torchvision detection, segmentation, video and optical-flow model."""
    tv = import_torchvision()
    return [_tv_case(group, name) for group in ("detection", "segmentation", "video", "optical_flow")
            for name in tv.models.list_models(module=getattr(tv.models, group))]


def all_cases() -> list[Case]:
    """Every case of the coverage table, in table order."""
    return [*TOYS, *TRANSFORMERS, *torchvision_cases()]

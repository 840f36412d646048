"""Emitted by torchgraft from transformers.models.llama.modeling_llama.LlamaModel. Needs only torch and safetensors."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LlamaAttention(nn.Module):
    """From transformers.models.llama.modeling_llama.LlamaAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(32, 32, bias=False)
        self.k_proj = nn.Linear(32, 16, bias=False)
        self.v_proj = nn.Linear(32, 16, bias=False)
        self.o_proj = nn.Linear(32, 32, bias=False)

    def forward(
        self, hidden_states: Tensor, position_embeddings, attention_mask: Tensor
    ):
        q = self.q_proj(hidden_states)
        batch, seq_len = hidden_states.shape[:2]
        q = q.view((batch, seq_len, -1, 8)).transpose(1, 2)
        k = self.k_proj(hidden_states).view((batch, seq_len, -1, 8)).transpose(1, 2)
        v = self.v_proj(hidden_states).view((batch, seq_len, -1, 8)).transpose(1, 2)
        cos = position_embeddings[0].unsqueeze(1)
        sin = position_embeddings[1].unsqueeze(1)
        out = q.mul(cos)
        x1 = q[..., : q.size(-1) // 2]
        cat_out = torch.cat((q[..., q.size(-1) // 2 :].neg(), x1), dim=-1)
        q_embed = out.add(cat_out.mul(sin))
        out = k.mul(cos)
        x1 = k[..., : k.size(-1) // 2]
        cat_out = torch.cat((k[..., k.size(-1) // 2 :].neg(), x1), dim=-1)
        k_embed = out.add(cat_out.mul(sin))
        key = k_embed.repeat_interleave(2, dim=1)
        value = v.repeat_interleave(2, dim=1)
        out = F.scaled_dot_product_attention(
            q_embed,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            scale=0.3535533905932738,
            is_causal=False,
        )
        out = out.reshape(out.size(0), -1, q_embed.size(2), value.size(-1)).transpose(
            1, 2
        )
        return (self.o_proj(out.contiguous().reshape(batch, seq_len, -1)), None)


class LlamaMLP(nn.Module):
    """From transformers.models.llama.modeling_llama.LlamaMLP."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(32, 64, bias=False)
        self.up_proj = nn.Linear(32, 64, bias=False)
        self.down_proj = nn.Linear(64, 32, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act_fn(self.gate_proj(x))
        return self.down_proj(out * self.up_proj(x))


class LlamaRMSNorm(nn.Module):
    """From transformers.models.llama.modeling_llama.LlamaRMSNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(32))

    def forward(self, hidden_states: Tensor) -> Tensor:
        out = hidden_states.to(torch.float32)
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-06)
        return self.weight * out.to(hidden_states.dtype)


class LlamaDecoderLayer(nn.Module):
    """From transformers.models.llama.modeling_llama.LlamaDecoderLayer."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = LlamaAttention()
        self.mlp = LlamaMLP()
        self.input_layernorm = LlamaRMSNorm()
        self.post_attention_layernorm = LlamaRMSNorm()

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor, position_embeddings
    ) -> Tensor:
        out = self.input_layernorm(hidden_states)
        out = self.self_attn(
            hidden_states=out,
            attention_mask=attention_mask,
            position_embeddings=(position_embeddings[0], position_embeddings[1]),
        )
        hidden_states = hidden_states.add(out[0])
        return hidden_states.add(self.mlp(self.post_attention_layernorm(hidden_states)))


class LlamaRotaryEmbedding(nn.Module):
    """From transformers.models.llama.modeling_llama.LlamaRotaryEmbedding."""

    def __init__(self) -> None:
        super().__init__()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def forward(self, x: Tensor, position_ids: Tensor):
        position_ids = position_ids[..., None].float()
        freqs = position_ids * self.inv_freq.to(device=x.device, dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * 1.0
        sin = emb.sin() * 1.0
        cos = cos.to(dtype=x.dtype)
        return (cos, sin.to(dtype=x.dtype))


class LlamaModel(nn.Module):
    """From transformers.models.llama.modeling_llama.LlamaModel."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(num_embeddings=100, embedding_dim=32)
        self.layers = nn.ModuleList([LlamaDecoderLayer() for _ in range(2)])
        self.norm = LlamaRMSNorm()
        self.rotary_emb = LlamaRotaryEmbedding()

    def forward(
        self, input_ids: Tensor, *, use_cache=None, cache=None, past_key_values=None
    ):
        asks_cache = bool(use_cache)
        asks = asks_cache | (cache is not None)
        if asks | (past_key_values is not None):
            raise ValueError(
                "<root> (LlamaModel) was captured without a key/value cache (as with use_cache=False): it returns no past_key_values and ignores a cache passed in, so incremental decoding is not supported; call it without use_cache=True, cache, past_key_values"
            )
        if input_ids is None:
            raise ValueError(
                "<root> (LlamaModel) was captured with input_ids given; calling it with input_ids=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        inputs_embeds = self.embed_tokens(input_ids)
        seq_len = inputs_embeds.size(1)
        device = input_ids.device
        position_ids = torch.arange(seq_len, device=device).add(0).unsqueeze(0)
        batch = inputs_embeds.size(0)
        out = position_ids.expand(batch, -1)
        out = torch.diff(out, prepend=out[:, :1].sub(1), dim=-1).ne(1)
        packed_sequence_mask = out.cumsum(-1)
        if inputs_embeds.dtype != torch.float32:
            raise ValueError(
                "<root> (LlamaModel) was captured with a float32 tensor whose dtype it reads at transformers/masking_utils.py:965; other dtypes may take another path; capture with an example of that dtype"
            )
        out = position_ids.expand(batch, -1)
        batch_arange = torch.arange(batch, device=device)
        q_arange = torch.arange(seq_len, device=device).add(0)
        kv_arange = torch.arange(seq_len, device=device).add(0)
        batch_indices = batch_arange[:, None, None, None]
        q_indices = q_arange[None, None, :, None]
        kv_indices = kv_arange[None, None, None, :]
        result = q_indices.new_ones((), dtype=torch.bool)
        item = out[batch_indices, q_indices]
        result = result & out[batch_indices, kv_indices].le(item).to(device)
        out = packed_sequence_mask[batch_indices, q_indices]
        out = (out == packed_sequence_mask[batch_indices, kv_indices]).to(device)
        causal_mask = (result & out).expand(batch, -1, seq_len, seq_len)
        rotary_emb_out = self.rotary_emb(inputs_embeds, position_ids=position_ids)
        rotary_emb_0 = rotary_emb_out[0]
        rotary_emb_1 = rotary_emb_out[1]
        for layer in self.layers:
            inputs_embeds = layer(
                inputs_embeds,
                attention_mask=causal_mask,
                position_embeddings=(rotary_emb_0, rotary_emb_1),
            )
        return {"last_hidden_state": self.norm(inputs_embeds)}


def build() -> LlamaModel:
    """The model, freshly initialised."""
    return LlamaModel()


def load(weights: str | Path | None = None) -> LlamaModel:
    """The model with weights loaded strict=True (default: the file beside this one)."""
    from safetensors.torch import load_file

    model = build()
    weights = weights or Path(__file__).with_name("weights.safetensors")
    model.load_state_dict(load_file(weights), strict=True)
    return model

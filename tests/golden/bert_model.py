"""Emitted by torchgraft from transformers.models.bert.modeling_bert.BertModel. Needs only torch and safetensors."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BertEmbeddings(nn.Module):
    """From transformers.models.bert.modeling_bert.BertEmbeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "position_ids", torch.zeros(1, 64, dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "token_type_ids", torch.zeros(1, 64, dtype=torch.int64), persistent=False
        )
        self.word_embeddings = nn.Embedding(
            num_embeddings=100, embedding_dim=32, padding_idx=0
        )
        self.position_embeddings = nn.Embedding(num_embeddings=64, embedding_dim=32)
        self.token_type_embeddings = nn.Embedding(num_embeddings=2, embedding_dim=32)
        self.LayerNorm = nn.LayerNorm(32, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, input_ids: Tensor) -> Tensor:
        if input_ids is None:
            raise ValueError(
                "embeddings (BertEmbeddings) was captured with input_ids given; calling it with input_ids=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        dim = input_ids.size(1)
        out = self.position_ids[:, 0 : dim + 0]
        gather_out = torch.gather(
            self.token_type_ids.expand(out.size(0), -1), dim=1, index=out
        )
        gather_out = gather_out.expand(input_ids.size(0), dim)
        input_ids = self.word_embeddings(input_ids)
        input_ids = input_ids.add(self.token_type_embeddings(gather_out))
        input_ids = self.LayerNorm(input_ids.add(self.position_embeddings(out)))
        return self.dropout(input_ids)


class BertSelfAttention(nn.Module):
    """From transformers.models.bert.modeling_bert.BertSelfAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(32, 32)
        self.key = nn.Linear(32, 32)
        self.value = nn.Linear(32, 32)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor):
        if attention_mask is None:
            raise ValueError(
                "encoder.layer.*.attention.self (BertSelfAttention) was captured with attention_mask given; calling it with attention_mask=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        query = self.query(hidden_states)
        batch, seq_len = hidden_states.shape[:2]
        query = query.view(batch, seq_len, -1, 8).transpose(1, 2)
        key = self.key(hidden_states).view(batch, seq_len, -1, 8).transpose(1, 2)
        value = self.value(hidden_states).view(batch, seq_len, -1, 8).transpose(1, 2)
        h = query.size(2)
        if h <= 1:
            raise ValueError(
                "encoder.layer.*.attention.self (BertSelfAttention) was captured where a size comparison (>) at transformers/integrations/sdpa_attention.py:148 was True; inputs for which it is False take another branch; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.1 if self.training else 0.0,
            scale=0.3535533905932738,
            is_causal=False,
        )
        out = out.reshape(out.size(0), -1, h, value.size(-1)).transpose(1, 2)
        return (out.contiguous().reshape(batch, seq_len, -1).contiguous(), None)


class BertSelfOutput(nn.Module):
    """From transformers.models.bert.modeling_bert.BertSelfOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(32, 32)
        self.LayerNorm = nn.LayerNorm(32, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Module):
    """From transformers.models.bert.modeling_bert.BertAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertSelfOutput()

    def forward(self, hidden_states: Tensor, attention_mask: Tensor):
        if attention_mask is None:
            raise ValueError(
                "encoder.layer.*.attention (BertAttention) was captured with attention_mask given; calling it with attention_mask=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        return (
            self.output(
                self.self(hidden_states, attention_mask=attention_mask)[0],
                hidden_states,
            ),
            None,
        )


class GELUActivation(nn.Module):
    """From transformers.activations.GELUActivation."""

    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input)


class BertIntermediate(nn.Module):
    """From transformers.models.bert.modeling_bert.BertIntermediate."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(32, 64)
        self.intermediate_act_fn = GELUActivation()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    """From transformers.models.bert.modeling_bert.BertOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(64, 32)
        self.LayerNorm = nn.LayerNorm(32, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertLayer(nn.Module):
    """From transformers.models.bert.modeling_bert.BertLayer."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertOutput()

    def forward(self, hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
        if attention_mask is None:
            raise ValueError(
                "encoder.layer.* (BertLayer) was captured with attention_mask given; calling it with attention_mask=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        attention_0 = self.attention(hidden_states, attention_mask)[0]
        return self.output(self.intermediate(attention_0), attention_0)


class BertEncoder(nn.Module):
    """From transformers.models.bert.modeling_bert.BertEncoder."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer() for _ in range(2)])

    def forward(self, hidden_states: Tensor, attention_mask: Tensor):
        if attention_mask is None:
            raise ValueError(
                "encoder (BertEncoder) was captured with attention_mask given; calling it with attention_mask=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        for block in self.layer:
            hidden_states = block(hidden_states, attention_mask)
        return {"last_hidden_state": hidden_states}


class BertPooler(nn.Module):
    """From transformers.models.bert.modeling_bert.BertPooler."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(32, 32)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class BertModel(nn.Module):
    """From transformers.models.bert.modeling_bert.BertModel."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()
        self.pooler = BertPooler()

    def forward(self, input_ids: Tensor):
        if input_ids is None:
            raise ValueError(
                "<root> (BertModel) was captured with input_ids given; calling it with input_ids=None takes another path; capture with an example that does: torchgraft.capture(model, examples=[(args, kwargs), ...])"
            )
        embeddings_out = self.embeddings(input_ids=input_ids)
        if embeddings_out.dtype != torch.float32:
            raise ValueError(
                "<root> (BertModel) was captured with a float32 tensor whose dtype it reads at transformers/masking_utils.py:1074; other dtypes may take another path; capture with an example of that dtype"
            )
        seq_len = embeddings_out.size(1)
        input_ids = torch.arange(seq_len, device=input_ids.device).add(0)[
            None, None, :, None
        ]
        input_ids = input_ids.ge(0).expand(embeddings_out.size(0), -1, seq_len, seq_len)
        last_hidden_state = self.encoder(embeddings_out, attention_mask=input_ids)[
            "last_hidden_state"
        ]
        return {
            "last_hidden_state": last_hidden_state,
            "pooler_output": self.pooler(last_hidden_state),
        }


def build() -> BertModel:
    """The model, freshly initialised."""
    model = BertModel()
    _load_constants(model)
    return model


def load(weights: str | Path | None = None) -> BertModel:
    """The model with weights loaded strict=True (default: the file beside this one)."""
    from safetensors.torch import load_file

    model = build()
    if weights is None:
        weights = Path(__file__).with_name("weights.safetensors")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model


def _load_constants(model: nn.Module) -> None:
    """Fill tensors that are not in the state_dict (non-persistent buffers, traced constants)."""
    from safetensors.torch import load_file

    constants = load_file(str(Path(__file__).with_name("constants.safetensors")))
    with torch.no_grad():
        for key, value in constants.items():
            model.get_buffer(key).copy_(value)

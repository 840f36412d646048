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
            "position_ids", torch.arange(64).reshape(1, 64), persistent=False
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

    def forward(self, input_ids: Tensor | None = None, cache_length: int = 0) -> Tensor:
        batch, dim = input_ids.shape
        out = self.position_ids[:, cache_length : dim + cache_length]
        buffered_token_type_ids = torch.gather(
            self.token_type_ids.expand(out.shape[0], -1), dim=1, index=out
        )
        token_type_ids = buffered_token_type_ids.expand(batch, dim)
        inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings + self.position_embeddings(out)))


class BertSelfAttention(nn.Module):
    """From transformers.models.bert.modeling_bert.BertSelfAttention."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(32, 32)
        self.key = nn.Linear(32, 32)
        self.value = nn.Linear(32, 32)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor):
        query = self.query(hidden_states)
        batch, seq_len = hidden_states.shape[:2]
        query = query.view(batch, seq_len, -1, 8).transpose(1, 2)
        key = self.key(hidden_states).view(batch, seq_len, -1, 8).transpose(1, 2)
        value = self.value(hidden_states).view(batch, seq_len, -1, 8).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.1 if self.training else 0.0,
            scale=0.3535533905932738,
            is_causal=False,
        )
        return (out.transpose(1, 2).contiguous().reshape(batch, seq_len, -1), None)


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
        return (
            self.output(
                self.self(hidden_states, attention_mask=attention_mask)[0],
                hidden_states,
            ),
            None,
        )


class BertIntermediate(nn.Module):
    """From transformers.models.bert.modeling_bert.BertIntermediate."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(32, 64)
        self.intermediate_act_fn = nn.GELU()

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
        attention_0 = self.attention(hidden_states, attention_mask)[0]
        return self.output(self.intermediate(attention_0), attention_0)


class BertEncoder(nn.Module):
    """From transformers.models.bert.modeling_bert.BertEncoder."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer() for _ in range(2)])

    def forward(self, hidden_states: Tensor, attention_mask: Tensor):
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
        embedding_output = self.embeddings(input_ids=input_ids)
        if embedding_output.dtype != torch.float32:
            raise ValueError(
                "<root> (BertModel) was captured with a float32 tensor whose dtype it reads at transformers/masking_utils.py:1074; other dtypes may take another path; capture with an example of that dtype"
            )
        seq_len = embedding_output.size(1)
        out = torch.arange(seq_len, device=input_ids.device).add(0)[None, None, :, None]
        out = self.encoder(
            embedding_output,
            attention_mask=out.ge(0).expand(
                embedding_output.size(0), -1, seq_len, seq_len
            ),
        )
        last_hidden_state = out["last_hidden_state"]
        return {
            "last_hidden_state": last_hidden_state,
            "pooler_output": self.pooler(last_hidden_state),
        }


def build() -> BertModel:
    """The model, freshly initialised."""
    return BertModel()


def load(weights: str | Path | None = None) -> BertModel:
    """The model with weights loaded strict=True (default: the file beside this one)."""
    from safetensors.torch import load_file

    model = build()
    weights = weights or Path(__file__).with_name("weights.safetensors")
    model.load_state_dict(load_file(weights), strict=True)
    return model

"""A decoder captured without its cache refuses, in one guard, every way of asking for one.

``frontends.cache_free``: the emitted forward keeps ``use_cache``, ``cache`` and ``past_key_values`` as
keyword parameters and refuses ``use_cache=True`` or any cache passed in with one ``ValueError`` naming
them all, so incremental decoding never silently runs without its cache.
"""

from __future__ import annotations

import pytest
import torch
from zoo import import_torchvision

import torchgraft

import_torchvision()
transformers = pytest.importorskip("transformers")


def test_one_guard_refuses_every_way_of_asking_for_a_cache() -> None:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaModel(cfg).eval()
    ids = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    captured = torchgraft.capture(model, (), {"input_ids": ids})
    code = torchgraft.emit(captured)
    assert code.source.count("captured without a key/value cache") == 1
    emitted = code.materialize().eval()
    for ask in ({"use_cache": True}, {"use_cache": 1}, {"past_key_values": object()}, {"cache": object()}):
        with pytest.raises(ValueError, match="incremental decoding is not supported; call it without use_cache=True"):
            emitted(input_ids=ids, **ask)
    torch.testing.assert_close(emitted(input_ids=ids, use_cache=False)["last_hidden_state"],
                               model(input_ids=ids, use_cache=False).last_hidden_state, rtol=1e-5, atol=1e-6)

"""Buffers a forward computes with are read at run time, never baked into the graph at capture.

torch.fx reads a buffer as the real tensor, so ``self.b.sum()`` ran at trace time and became a constant
(``_tensor_constant0``): the emitted model ignored any other value loaded into ``b`` (a checkpoint, a
fine-tuned buffer). Capture's tracer proxies buffer reads like parameter reads. References are the eager
modules after the same state change.
"""

from __future__ import annotations

import torch
from torch import nn

import torchgraft

TOL = {"rtol": 1e-6, "atol": 1e-6}


class SumsABuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(3))
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale.sum() + self.scale.float().mean()


class SlicesItsBuffer(nn.Module):
    """A buffer named like an optional argument (transformers' ``position_ids``): fx names the buffer read
    ``position_ids`` and the argument ``position_ids_1``; each must keep reading what it read."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("position_ids", torch.arange(16)[None], persistent=False)
        self.emb = nn.Embedding(16, 4)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = self.position_ids[:, : x.shape[1]]
        return x + self.emb(position_ids)


def test_a_buffer_read_follows_the_loaded_state() -> None:
    torch.manual_seed(0)
    model = SumsABuffer().eval()
    code = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 4),)))
    assert "_tensor_constant" not in code.source and "scale.sum()" in code.source
    emitted = code.materialize().eval()
    with torch.no_grad():
        model.scale.copy_(torch.tensor([2.0, -1.0, 5.0]))
    emitted.load_state_dict(model.state_dict(), strict=True)
    for b in (1, 3):
        x = torch.randn(b, 4)
        torch.testing.assert_close(emitted(x), model(x), **TOL)


def test_a_buffer_read_named_like_an_argument_reads_the_buffer() -> None:
    torch.manual_seed(0)
    model = SlicesItsBuffer().eval()
    emitted = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 5, 4),))).materialize().eval()
    for shape in ((2, 5, 4), (3, 9, 4)):
        x = torch.randn(*shape)
        torch.testing.assert_close(emitted(x), model(x), **TOL)

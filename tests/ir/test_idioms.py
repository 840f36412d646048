"""ir/idioms.py: library spellings written as what they compute, exactly (issue 12: code a person would write).

Each rule is checked end to end: a module written the long way is captured and emitted, the emitted
forward uses the short form, and its outputs equal the original's (exactly: the rules only move
elements) at the example's sizes and others; a near miss is left alone and still equal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import torchgraft
from torchgraft.ir.idioms import repeat_interleaved, simplified


class RepeatKV(nn.Module):
    """transformers' ``repeat_kv``: each head repeated ``n`` times, next to itself."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        b, h, s, d = x.shape
        return x[:, :, None, :, :].expand(b, h, self.n, s, d).reshape(b, h * self.n, s, d) * 2


class RepeatBatch(nn.Module):
    """The same along dim 0, the factor written first."""

    def forward(self, x: Tensor) -> Tensor:
        b, h, s = x.shape
        return x[:, None].expand(b, 2, h, s).reshape(2 * b, h, s) + 1


class NearMiss(nn.Module):
    """Merges the repeat into the wrong dim: not a repeat_interleave."""

    def forward(self, x: Tensor) -> Tensor:
        b, h, s, d = x.shape
        return x[:, :, None, :, :].expand(b, h, 3, s, d).reshape(b, h, 3 * s, d) - 1


class SharedExpand(nn.Module):
    """The expanded view is read twice: nothing is rewritten."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, h, s, d = x.shape
        e = x[:, :, None, :, :].expand(b, h, 2, s, d)
        return e.reshape(b, h * 2, s, d), e.sum(2)


def _emitted(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    return code.source, code.materialize()


def _same(model: nn.Module, emitted: nn.Module, *shapes: tuple[int, ...]) -> None:
    for shape in shapes:
        x = torch.randn(*shape)
        want, got = model(x), emitted(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the rules only move elements: exact


def test_repeat_kv_is_written_as_repeat_interleave() -> None:
    torch.manual_seed(0)
    model = RepeatKV().eval()
    source, emitted = _emitted(model, torch.randn(2, 4, 5, 8))
    assert "x.repeat_interleave(3, dim=1)" in source and ".expand(" not in source, source
    _same(model, emitted, (2, 4, 5, 8), (1, 2, 7, 8), (3, 1, 1, 4))


def test_repeat_along_dim_0_factor_first() -> None:
    torch.manual_seed(0)
    model = RepeatBatch().eval()
    source, emitted = _emitted(model, torch.randn(3, 4, 5))
    assert "repeat_interleave(2, dim=0)" in source, source
    _same(model, emitted, (3, 4, 5), (1, 2, 2), (4, 1, 6))


def test_near_misses_are_left_alone() -> None:
    torch.manual_seed(0)
    for model, shape in ((NearMiss(), (2, 4, 5, 8)), (SharedExpand(), (2, 3, 4, 5))):
        source, emitted = _emitted(model.eval(), torch.randn(*shape))
        assert "repeat_interleave" not in source, source
        for s in (shape, (1, *shape[1:])):
            x = torch.randn(*s)
            torch.testing.assert_close(emitted(x), model(x), rtol=0, atol=0)


def test_rules_are_pure_functions_of_the_graph() -> None:
    ir = torchgraft.capture(RepeatKV().eval(), (torch.randn(2, 4, 5, 8),))
    body = ir.root.body  # type: ignore[attr-defined]
    once = simplified(body)
    assert repeat_interleaved(once) is None  # applied to a fixpoint
    assert simplified(once) == once and body == ir.root.body  # type: ignore[attr-defined]  # input unchanged


class Attention(nn.Module):
    """GPT-2's attention body: sizes read through other tensors, a reshape to the same shape, contiguous twice."""

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = x.split(8, dim=2)
        k = k.view(k.size(0), k.size(1), -1, 4).transpose(1, 2)
        v = v.view(v.size(0), v.size(1), -1, 4).transpose(1, 2)
        q = q.view(q.size(0), q.size(1), -1, 4).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.reshape(out.size(0), -1, q.size(2), v.size(-1))
        out = out.transpose(1, 2).contiguous()
        return out.reshape(out.size(0), out.size(1), -1).contiguous() * 2


class NotSameShape(nn.Module):
    """Reshapes that change the shape, and sizes of dims that differ: all kept."""

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = x.reshape(x.size(0), -1)  # merges dims 1 and 2
        b = x.transpose(1, 2).reshape(x.size(0), x.size(1), x.size(2))  # dims 1 and 2 swapped back: not x
        c = (x + y).reshape(x.size(0), x.size(1), -1)  # y may broadcast x: x's sizes are not x + y's
        return a * 1, b * 1, c * 1


def test_attention_body_reads_sizes_once_and_drops_same_shape_reshapes() -> None:
    torch.manual_seed(0)
    model = Attention().eval()
    source, emitted = _emitted(model, torch.randn(2, 5, 24))
    body = source.split("def forward")[1].split("def build")[0]
    assert body.count(".size(") + body.count(".shape") <= 1, body  # batch and seq_len read once
    assert "-1, q" not in body and body.count(".contiguous()") == 1, body
    _same(model, emitted, (2, 5, 24), (1, 1, 24), (3, 9, 24))


def test_reshapes_that_change_the_shape_stay() -> None:
    torch.manual_seed(0)
    model = NotSameShape().eval()
    code = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 3, 4), torch.randn(2, 3, 4))))
    emitted = code.materialize()
    assert code.source.count(".reshape(") == 3, code.source
    for xs, ys in (((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (1, 3, 1)), ((1, 5, 5), (1, 5, 5)), ((1, 3, 1), (2, 3, 4))):
        x, y = torch.randn(*xs), torch.randn(*ys)
        want, got = model(x, y), emitted(x, y)
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


class Slices(nn.Module):
    """A whole slice of a tensor (dropped), a slice that cuts (kept), a whole slice of a list (kept: a copy)."""

    def forward(self, x: Tensor, items: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        whole = (x * 2)[:, 0:, :]
        cut = (x * 3)[:, 1:]
        copied = items[0:]
        copied.append(x)
        return whole + 1, cut + 1, copied


def test_whole_slices_are_dropped_and_cuts_kept() -> None:
    torch.manual_seed(0)
    model = Slices().eval()
    x = torch.randn(2, 3, 4)
    code = torchgraft.emit(torchgraft.capture(model, (x, [torch.randn(2)])))
    assert ":, 0:" not in code.source and "[:, 1:]" in code.source and "items[0:]" in code.source, code.source
    emitted = code.materialize()
    for shape in ((2, 3, 4), (1, 5, 1)):
        y, items = torch.randn(*shape), [torch.randn(3)]
        want, got = model(y, list(items)), emitted(y, list(items))
        torch.testing.assert_close(got[:2], want[:2], rtol=0, atol=0)
        assert len(got[2]) == len(want[2]) == 2


class SdpaBroadcast(nn.Module):
    """The attention's batch dims broadcast over q, k and v: its dim 0 is not q's (seen in review)."""

    def forward(self, x: Tensor, mem: Tensor) -> Tensor:
        b, t = x.size(0), x.size(1)
        q = x.view(b, t, 2, 4).transpose(1, 2)
        k = mem.view(mem.size(0), mem.size(1), 2, 4).transpose(1, 2)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, k)
        return o.transpose(1, 2).reshape(o.size(0), -1)


class ShapeWrites(nn.Module):
    """``t_()`` changes a tensor's layout in place: no contiguous() is dropped, no view merged."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x.contiguous() * 1
        y.t_()
        z = y.contiguous()
        z.add_(1)
        return y, z


def test_attention_batch_broadcast_and_layout_writes_are_respected() -> None:
    torch.manual_seed(0)
    model = SdpaBroadcast().eval()
    code = torchgraft.emit(torchgraft.capture(model, (torch.randn(2, 3, 8), torch.randn(2, 5, 8))))
    emitted = code.materialize()
    for xs, ms in (((2, 3, 8), (2, 5, 8)), ((1, 3, 8), (3, 5, 8))):
        x, m = torch.randn(*xs), torch.randn(*ms)
        torch.testing.assert_close(emitted(x, m), model(x, m), rtol=0, atol=0)
    writes = ShapeWrites().eval()
    source, emitted = _emitted(writes, torch.randn(2, 3))
    assert source.count(".contiguous()") == 2, source
    for shape in ((2, 3), (4, 1)):
        x = torch.randn(*shape)
        for got, want in zip(emitted(x.clone()), writes(x.clone()), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

"""Size guards relaxed where the other outcome computes the same (``frontends.guard_relax``).

A concrete trace guards each comparison of sizes; a comparison is traced again with its outcome flipped,
and a comparison that differs between examples is seen both ways. The emitted model must equal eager
(``assert_close``, rtol 1e-5 / atol 1e-6) on inputs the example did not show, or refuse them with a
``ValueError``: never run and differ.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from zoo import import_torchvision

import torchgraft
from tests.frontends import guard_lib
from torchgraft.ir.verify import verify

TOL = {"rtol": 1e-5, "atol": 1e-6}


class _Attn(nn.Module):
    """Keyword-only mask: torch.fx cannot trace it, the concrete trace does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.proj(x)
        if guard_lib.causal_flag(y, mask):
            return y.cumsum(1)
        return y * mask[..., None] if mask is not None else y


class _Doubled(nn.Module):
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return guard_lib.doubled_when_long(x) * scale


class _Either(nn.Module):
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return guard_lib.either_long(x) * scale


class _Positions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 4)

    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return self.embed(guard_lib.positions(x)) * scale + x.unsqueeze(-1)


class _FlatPositions(_Positions):
    """Reads the positions flattened to batch * length: the other branch cannot run on batch-2 data."""

    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        flat = guard_lib.positions(x).reshape(x.shape[0] * x.shape[1])
        return self.embed(flat).reshape(x.shape[0], x.shape[1], 4) * scale + x.unsqueeze(-1)


class _NamedPositions(_Positions):
    """transformers' spelling: the source shows the other branch only skips an identity expand."""

    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        flat = guard_lib.positions_named(x).reshape(x.shape[0] * x.shape[1])
        return self.embed(flat).reshape(x.shape[0], x.shape[1], 4) * scale + x.unsqueeze(-1)


class _ElsePositions(_Positions):
    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        flat = guard_lib.positions_else(x).reshape(x.shape[0] * x.shape[1])
        return self.embed(flat).reshape(x.shape[0], x.shape[1], 4) * scale + x.unsqueeze(-1)


class _Caught(nn.Module):
    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return guard_lib.caught_view(x) * scale


class _Mode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cfg = {"mode": "plain"}

    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return guard_lib.mode_flag(self.cfg, x) * scale


class _Zeroing(nn.Module):
    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return guard_lib.zero_when_wide(x) * scale


class _Library(nn.Module):
    """Calls one library-style helper (its decisions are guarded, not copied as the forward's own)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    @guard_lib.passthrough
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return self.fn(x) * scale


def _emitted(model: nn.Module, calls: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> nn.Module:
    captured = torchgraft.capture(model, examples=[((x,), kw) for x, kw in calls])
    verify(captured)
    return torchgraft.emit(captured).materialize().eval()


def _same_or_refused(emitted: nn.Module, model: nn.Module, x: torch.Tensor, **kw: torch.Tensor) -> bool:
    """True when the emitted model ran (and equals eager), False when it refused."""
    try:
        out = emitted(x, **kw)
    except ValueError:
        return False
    torch.testing.assert_close(out, model(x, **kw), **TOL)
    return True


def test_a_comparison_that_decides_nothing_is_not_guarded() -> None:
    torch.manual_seed(0)
    model = _Attn().eval()
    emitted = _emitted(model, [(torch.randn(2, 5, 4), {"mask": torch.ones(2, 5)})])
    for shape in ((2, 5), (3, 1), (1, 1), (2, 9)):  # one token: the guard on q_len > 1 would refuse it
        mask = (torch.rand(shape) > 0.3).float()
        assert _same_or_refused(emitted, model, torch.randn(*shape, 4), mask=mask)


def test_a_comparison_that_decides_the_result_stays_guarded() -> None:
    model = _Doubled()
    emitted = _emitted(model, [(torch.randn(2, 5), {})])
    assert _same_or_refused(emitted, model, torch.randn(3, 7))
    with pytest.raises(ValueError, match="size comparison"):
        emitted(torch.randn(3, 1))


def test_two_comparisons_that_matter_only_together_are_not_both_dropped() -> None:
    model = _Either()
    emitted = _emitted(model, [(torch.randn(2, 5), {})])
    for shape in ((2, 5), (3, 4), (1, 5)):  # the first comparison alone decides nothing: its guard is dropped
        assert _same_or_refused(emitted, model, torch.randn(*shape))
    _same_or_refused(emitted, model, torch.randn(2, 1))  # the second then keeps its guard (equal if it runs)
    assert not _same_or_refused(emitted, model, torch.randn(1, 1))  # both flipped: x, not x * 2


def test_a_flipped_branch_that_raises_and_is_caught_proves_nothing() -> None:
    model = _Caught()
    emitted = _emitted(model, [(torch.randn(2, 5), {})])
    assert _same_or_refused(emitted, model, torch.randn(3, 5))
    assert not _same_or_refused(emitted, model, torch.randn(1, 5))  # eager doubles it: refused, never x


def test_a_flipped_branch_leaves_no_python_state_behind() -> None:
    model = _Mode()
    emitted = _emitted(model, [(torch.randn(2, 5), {})])
    assert model.cfg == {"mode": "plain"}
    for shape in ((2, 5), (3, 7)):  # the eval trace after the train trace's flips must still see "plain"
        assert _same_or_refused(emitted, model, torch.randn(*shape))
    assert not _same_or_refused(emitted, model, torch.randn(2, 101))  # the branch that sets mode: refused


def test_a_flipped_branch_writes_into_a_copy_of_the_input() -> None:
    x = torch.randn(2, 5)
    kept = x.clone()
    emitted = _emitted(_Zeroing(), [(x, {})])
    assert torch.equal(x, kept)
    assert _same_or_refused(emitted, _Zeroing(), torch.randn(2, 5))


@pytest.mark.parametrize(("fn", "other"), [
    (guard_lib.all_but_last, (2, 8)),  # int(n): pinned, never baked as 5
    (guard_lib.doubled_above_half, (2, 1)),  # n > 1.5: guarded like n > 1
    (guard_lib.scaled_by_layout, (1, 5)),  # y.is_contiguous(): guarded
])
def test_library_decisions_on_sizes_are_guarded(fn: Callable[[torch.Tensor], torch.Tensor],
                                                 other: tuple[int, int]) -> None:
    model = _Library(fn)
    emitted = _emitted(model, [(torch.randn(2, 5), {})])
    assert _same_or_refused(emitted, model, torch.randn(2, 5))
    assert not _same_or_refused(emitted, model, torch.randn(*other))  # another outcome: refused, not wrong


def test_an_expand_skipped_at_batch_one_is_seen_by_flipping() -> None:
    torch.manual_seed(0)
    model = _Positions().eval()  # the flipped trace runs (pos broadcasts) and differs only by the expand
    emitted = _emitted(model, [(torch.randn(2, 5), {})])
    for shape in ((2, 5), (1, 5), (3, 2), (1, 1)):
        assert _same_or_refused(emitted, model, torch.randn(*shape))


def test_an_expand_skipped_at_batch_one_merges_two_examples() -> None:
    torch.manual_seed(0)
    model = _FlatPositions().eval()
    one = _emitted(model, [(torch.randn(2, 5), {})])
    with pytest.raises(ValueError, match="size comparison"):  # the flip cannot run: batch 1 stays refused
        one(torch.randn(1, 5))
    both = _emitted(model, [(torch.randn(2, 5), {}), (torch.randn(1, 5), {})])
    for shape in ((2, 5), (1, 5), (3, 2), (1, 1)):
        assert _same_or_refused(both, model, torch.randn(*shape))
    reverse = _emitted(model, [(torch.randn(1, 5), {}), (torch.randn(2, 5), {})])  # the expand seen second
    for shape in ((2, 5), (1, 5), (4, 3)):
        assert _same_or_refused(reverse, model, torch.randn(*shape))


def test_the_source_shows_an_expand_skipped_at_batch_one() -> None:
    torch.manual_seed(0)
    model = _NamedPositions().eval()
    captured = torchgraft.capture(model, (torch.randn(2, 5),))
    assert [k for _, k, _ in captured.report.guards] == ["argument"]  # scale=1.0 only: no size guard, and no
    # rank guard either (pos = arange(T).unsqueeze(0) has 2 dims on every call)
    emitted = torchgraft.emit(captured).materialize().eval()
    for shape in ((2, 5), (1, 5), (3, 2), (1, 1)):
        assert _same_or_refused(emitted, model, torch.randn(*shape))
    other = _ElsePositions().eval()  # an else branch: the source proves nothing, batch 1 stays refused
    emitted = _emitted(other, [(torch.randn(2, 5), {})])
    with pytest.raises(ValueError, match="size comparison"):
        emitted(torch.randn(1, 5))


@pytest.mark.parametrize("batches", [((2, 7),), ((2, 7), (1, 5))], ids=["batch-2", "batches-2-and-1"])
def test_llama_serves_batch_one_and_one_token(batches: tuple[tuple[int, int], ...]) -> None:
    import_torchvision()
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaModel(cfg).eval()
    ids = [torch.randint(1, 99, shape, generator=torch.Generator().manual_seed(0)) for shape in batches]
    captured = torchgraft.capture(model, examples=[((), {"input_ids": i}) for i in ids])
    verify(captured)
    assert "size" not in {kind for _, kind, _ in captured.report.guards}  # mask code and sdpa: nothing guarded
    emitted = torchgraft.emit(captured).materialize().eval()
    for shape in ((2, 7), (1, 7), (3, 1), (1, 1), (2, 12)):  # batch 1 and one token: no guard refuses them
        x = torch.randint(1, 99, shape)
        torch.testing.assert_close(emitted(input_ids=x)["last_hidden_state"],
                                   model(input_ids=x).last_hidden_state, **TOL)

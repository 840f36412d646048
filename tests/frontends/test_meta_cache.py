"""The meta replay reuses a pure call's result metadata only when nothing it depends on differs.

Reused results are fresh tensors with the recorded shape, strides, offset and dtype; calls that
return (a view of) an argument, change a list argument, or take a non-constant are run every time.
Equality of the types with an eager replay on whole models is in ``test_meta_replay.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import torchgraft
from torchgraft.frontends.meta_cache import MetaCache, layer_key


def _counting(fn: Callable[[], Any]) -> tuple[list[int], Callable[[], Any]]:
    calls = [0]

    def run() -> Any:
        calls[0] += 1
        return fn()

    return calls, run


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def test_same_call_runs_once_and_gives_a_fresh_tensor_with_the_same_strides() -> None:
    cache = MetaCache()
    x = _meta(2, 8, 5).permute(0, 2, 1)  # non-contiguous: the layer_norm ref keeps no simple layout
    calls, run = _counting(lambda: torch.nn.functional.layer_norm(x, (8,)))
    a = cache.call(("f", "layer_norm"), [x, (8,)], {}, run)
    b = cache.call(("f", "layer_norm"), [_meta(2, 8, 5).permute(0, 2, 1), (8,)], {}, run)
    assert calls == [1]
    assert a is not b and (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype)


def test_different_strides_dtype_or_constants_run_again() -> None:
    cache = MetaCache()
    calls, run = _counting(lambda: _meta(3))
    cache.call("f", [_meta(2, 3)], {}, run)
    cache.call("f", [_meta(3, 2).t()], {}, run)  # same shape, other strides
    cache.call("f", [_meta(2, 3).half()], {}, run)
    cache.call("f", [_meta(2, 3)], {"dim": 1}, run)
    cache.call("g", [_meta(2, 3)], {}, run)
    assert calls == [5]


def test_results_aliasing_an_argument_are_not_reused() -> None:
    cache = MetaCache()
    x = _meta(4, 4)
    for make in (lambda: x, lambda: x.view(16), lambda: (x.t(), _meta(1))):
        calls, run = _counting(make)
        cache.call(("alias", id(make)), [x], {}, run)
        cache.call(("alias", id(make)), [x], {}, run)
        assert calls == [2]


def test_a_view_of_a_new_tensor_is_reused_with_its_offset() -> None:
    cache = MetaCache()
    calls, run = _counting(lambda: _meta(4, 6)[1:, 2:])
    a = cache.call("slice", [_meta(1)], {}, run)
    b = cache.call("slice", [_meta(1)], {}, run)
    assert calls == [1]
    assert (b.shape, b.stride(), b.storage_offset()) == (a.shape, a.stride(), a.storage_offset()) == (
        (3, 4), (6, 1), 8)


def test_a_call_that_changes_its_list_argument_is_not_reused() -> None:
    cache = MetaCache()
    size = [2, 3]
    calls, run = _counting(lambda: (size.append(1), _meta(2))[1])
    cache.call("grow", [size], {}, run)
    size[:] = [2, 3]
    cache.call("grow", [size], {}, run)
    assert calls == [2]


def test_unhashable_or_real_arguments_are_not_cached() -> None:
    cache = MetaCache()
    calls, run = _counting(lambda: _meta(1))
    for arg in ({"a": 1}, torch.zeros(1), nn.Linear(1, 1)):
        cache.call("f", [arg], {}, run)
        cache.call("f", [arg], {}, run)
    assert calls == [6]


def test_layer_key_sees_mode_attributes_and_state() -> None:
    a, b = nn.LayerNorm(8), nn.LayerNorm(8)
    assert layer_key(a, list(a.parameters())) == layer_key(b, list(b.parameters()))
    assert layer_key(a, []) != layer_key(nn.LayerNorm(8, eps=1e-6), [])
    assert layer_key(a, []) != layer_key(nn.LayerNorm(8).train(False), [])
    assert layer_key(a, list(a.parameters())) != layer_key(b, list(b.half().parameters()))


class _Repeated(nn.Module):
    """Four identical LayerNorms on a non-contiguous input (no shape rule: the meta kernel runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(6) for _ in range(4))
        self.last = nn.LayerNorm(6, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        for norm in self.norms:
            x = norm(x)
        return self.last(x).sum(-1)


def test_capture_types_of_repeated_layers_match_eager() -> None:
    torch.manual_seed(0)
    model = _Repeated().eval()
    x = torch.randn(2, 6, 5)
    captured = torchgraft.capture(model, (x,))
    assert captured.report.typing == "meta"
    assert str(captured.output_type) == "f32[N, 5]"
    got = torchgraft.emit(captured).materialize().eval()
    with torch.no_grad():
        torch.testing.assert_close(got(x), model(x), rtol=1e-5, atol=1e-6)  # tolerance: float32 reordering

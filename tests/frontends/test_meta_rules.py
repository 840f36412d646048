"""The meta replay's shape rules (``ir.shapes``) type a capture exactly as the meta kernels would."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.frontends import meta_replay
from torchgraft.ir import shapes
from torchgraft.ir.primitives import LayerNorm


class ChannelsNorm(nn.LayerNorm):
    """ConvNeXt's LayerNorm2d: normalises channels of an NCHW tensor through a permuted view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt's block: an nn.LayerNorm on a permuted (non-contiguous) input, then a view that needs
    the strides the kernel gives."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.permute(0, 2, 3, 1))
        return self.fc(y.view(y.shape[0], -1, y.shape[-1])).view_as(y).permute(0, 3, 1, 2) + x


def _without_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer_norm and global pooling rules off: the meta kernels run instead."""
    rule = meta_replay.primitive_output

    def no_layer_norm(prim: Any, args: Any, *rest: Any) -> Any:
        off = isinstance(prim, LayerNorm) or getattr(prim, "op", "") == "AdaptiveAvgPool2d"
        return None if off else rule(prim, args, *rest)

    monkeypatch.setattr(shapes, "layer_norm_output", lambda a, kw: None)
    monkeypatch.setattr(meta_replay, "primitive_output", no_layer_norm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_norm_rules_give_the_types_the_kernels_give(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ChannelsNorm(4), Block(4), nn.Conv2d(4, 4, 1), ChannelsNorm(4), Block(4)).to(dtype).eval()
    x = torch.randn(2, 4, 5, 3, dtype=dtype)
    rule, used = shapes.layer_norm_output, []
    monkeypatch.setattr(shapes, "layer_norm_output", lambda a, kw: used.append(rule(a, kw)) or used[-1])
    fast = torchgraft.capture(model, (x,))
    assert len(used) == 2 and all(u is not None for u in used)  # the functional rule answered, on permuted inputs
    _without_rules(monkeypatch)
    slow = torchgraft.capture(model, (x,))
    assert fast.report.typing == slow.report.typing == "meta"
    assert fast == slow and fast.types == slow.types and fast.output_type == slow.output_type  # root, types, helpers
    assert str(fast) == str(slow)


def test_torchvision_convnext_and_squeeze_excitation_types_equal_with_and_without_rules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.convnext.CNBlock(8, 0.1, 0.5).eval()
    stem = nn.Sequential(tv.models.convnext.LayerNorm2d(8), model, tv.models.convnext.LayerNorm2d(8),
                         tv.ops.SqueezeExcitation(8, 2), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()).eval()
    x = torch.randn(2, 8, 7, 7)
    fast = torchgraft.capture(stem, (x,))
    _without_rules(monkeypatch)
    slow = torchgraft.capture(stem, (x,))
    assert fast == slow and str(fast) == str(slow)


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_function_rules_match_the_meta_kernels(dtype: torch.dtype) -> None:
    from torchgraft.frontends.meta_rules import _RULES

    def m(*shape: int) -> torch.Tensor:
        return _meta(*shape, dtype=dtype)

    w, b = m(6, 4), m(6)
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (F.linear, (m(2, 3, 4), w, b), {}), (F.linear, (m(5, 4), w), {}), (F.linear, (m(4), w, b), {}),
        (F.linear, (m(2, 3, 5, 4),), {"weight": w, "bias": None}), (F.linear, (m(1, 1, 4), w), {"bias": b}),
        (torch.roll, (m(2, 7, 7, 3), (3, 3), (1, 2)), {}), (torch.roll, (m(2, 1, 4), 1, -1), {}),
        (torch.Tensor.roll, (m(4, 5),), {"shifts": [2], "dims": [0]}),
        (torch.Tensor.__add__, (m(2, 3, 4), m(3, 1)), {}), (torch.Tensor.__radd__, (m(2, 3), 1.5), {}),
        (torch.Tensor.__mul__, (m(2, 3), 2), {}), (torch.Tensor.__rmul__, (m(2, 3), 0.5), {}),
        (torch.Tensor.sub, (m(3, 1, 4), m(1, 5, 4)), {}),
        (torch.add, (m(2, 3), _meta(2, 3, dtype=torch.float64)), {}),  # promotion
    ]
    with torch.no_grad():
        for func, args, kwargs in calls:
            rule, real = _RULES[func](args, kwargs), func(*args, **kwargs)
            assert rule is not None, func
            assert (rule.shape, rule.stride(), rule.dtype, rule.storage_offset()) == \
                (real.shape, real.stride(), real.dtype, real.storage_offset()), func


def test_function_rules_decline_what_they_cannot_vouch_for() -> None:
    from torchgraft.frontends.meta_rules import _RULES

    x = _meta(2, 3, 4)
    assert _RULES[F.linear]((x.transpose(0, 1), _meta(6, 4)), {}) is None  # not contiguous
    assert _RULES[F.linear]((x, _meta(6, 4, dtype=torch.float16)), {}) is None  # mixed dtypes
    assert _RULES[F.linear]((x, _meta(6, 5)), {}) is None  # the kernel raises
    assert _RULES[F.linear]((x, _meta(6, 4), _meta(5)), {}) is None
    assert _RULES[F.linear]((torch.empty(2, 4), torch.empty(6, 4)), {}) is None  # not meta
    assert _RULES[torch.roll]((x, (1, 1), (0, 0)), {}) is None  # a dim twice
    assert _RULES[torch.roll]((x, (1,), (5,)), {}) is None  # out of range
    assert _RULES[torch.roll]((x, 1), {}) is None  # no dims: flattened roll, left to the kernel
    assert _RULES[torch.Tensor.__sub__]((x, True), {}) is None  # a bool: the kernel decides
    assert _RULES[torch.Tensor.__add__]((x, x), {"alpha": 2}) is None


def test_window_attention_types_equal_with_and_without_function_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo import import_torchvision

    tv = import_torchvision()
    from torchgraft.frontends import meta_rules

    torch.manual_seed(0)
    block = tv.models.swin_transformer.SwinTransformerBlock
    model = nn.Sequential(block(8, 2, [4, 4], [0, 0]), block(8, 2, [4, 4], [2, 2]),
                          tv.models.swin_transformer.PatchMerging(8)).eval()
    x = torch.randn(2, 8, 8, 8)
    answered: list[Any] = []

    def counted(rule: Any) -> Any:
        return lambda a, kw: answered.append(rule(a, kw)) or answered[-1]

    monkeypatch.setattr(meta_rules, "_RULES", {f: counted(r) for f, r in meta_rules._RULES.items()})
    fast = torchgraft.capture(model, (x,))
    assert sum(a is not None for a in answered) >= 8  # linear, roll, add answered by rules
    monkeypatch.setattr(meta_replay, "fast_meta", contextlib.nullcontext)
    slow = torchgraft.capture(model, (x,))
    assert fast.report.typing == slow.report.typing == "meta"
    assert fast == slow and str(fast) == str(slow)

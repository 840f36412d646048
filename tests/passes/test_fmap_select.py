"""``passes.fmap`` (sites know their parent), ``passes.select`` (a selection you can count and preview),
and selectors that select nothing (a warning; ``strict`` fails)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.errors import IRError, SelectorWarning
from torchgraft.ir.verify import verify
from torchgraft.passes import PipelineError, Site, fmap, run, select

TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


class ConvThenMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.head(self.features(x)))


def _captured() -> tuple[nn.Module, ir.Model]:
    m = ConvThenMlp().eval()
    return m, torchgraft.capture(m, (torch.randn(2, 3, 8, 8),))


def test_fmap_sees_parents_and_only_swaps_activations_beside_convs() -> None:
    original, captured = _captured()
    seen: list[tuple[str, str, str]] = []

    def tanh_near_convs(site: Site) -> ir.Node | None:
        if site.is_activation:
            seen.append((site.path, type(site.parent).__name__, site.spelling))
        return ir.Tanh() if site.is_activation and site.parent.contains(ir.Conv) else None

    new = fmap(captured, tanh_near_convs)
    verify(new)
    assert ("features.1", "Chain", "module") in seen
    assert ("head.2", "Chain", "module") in seen
    assert any(path == "relu" and spelling == "functional" for path, _, spelling in seen)
    assert set(new.weights) == set(captured.weights)
    rebuilt = torchgraft.emit(new).materialize().eval()
    x = torch.randn(3, 3, 8, 8)
    f = original.features[0]
    h = original.head[1](torch.tanh(f(x)).flatten(1))
    with torch.no_grad():
        # head.2 stays relu (its Chain holds no conv); the root's F.relu becomes tanh (the root holds the conv)
        torch.testing.assert_close(rebuilt(x), torch.tanh(F.relu(h)), **TOL)


def test_fmap_refuses_a_replacement_with_other_state() -> None:
    _, captured = _captured()
    with pytest.raises(IRError, match="features.0.*replace-module"):
        fmap(captured, lambda s: ir.Conv2d(3, 8, 3) if s.path == "features.0" else None)


def test_fmap_dropping_state_drops_its_weights() -> None:
    _, captured = _captured()
    new = fmap(captured, lambda s: ir.Identity() if s.path == "head.1" else None)
    assert "head.1.weight" not in new.weights and "head.1.weight" in captured.weights


def test_select_counts_and_previews() -> None:
    _, captured = _captured()
    convs = select(captured, "kind:Conv2d")
    assert len(convs) == 1 and convs.paths == ("features.0",)
    assert "kind:Conv2d selects 1 site(s)" in str(convs)
    assert len(select(captured, "kind:ReLU")) == 3  # two modules and the F.relu call
    inside = select(captured, "in:Sequential")
    assert set(inside.paths) == {"features.0", "features.1", "head.0", "head.1", "head.2"}
    assert not select(captured, "in:Bottleneck")


def test_a_selector_that_selects_nothing_warns_and_strict_fails() -> None:
    _, captured = _captured()
    with pytest.warns(SelectorWarning, match="in:Bottleneck.*selects nothing"):
        run(captured, "swap-activation{from=relu to=gelu where=in:Bottleneck}")
    with pytest.raises(PipelineError, match="selects nothing"):
        run(captured, "swap-activation{from=relu to=gelu where=in:Bottleneck}", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(captured, "swap-activation{from=relu to=gelu where=in:Sequential}")


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 6, bias=False)
        self.mid = nn.ReLU()
        self.head = nn.Linear(6, 6, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.emb(x)))


def test_fmap_keeps_ties_consistent() -> None:
    """Replacing the alias of a tie drops the tie; replacing its owner while the alias stays is refused."""
    original = Tied().eval()
    captured = torchgraft.capture(original, (torch.randn(3, 6),))
    assert captured.ties == (("head.weight", "emb.weight"),)
    no_head = fmap(captured, lambda s: ir.Tanh() if s.path == "head" else None)
    verify(no_head)
    assert no_head.ties == () and set(no_head.weights) == {"emb.weight"}
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(torchgraft.emit(no_head).materialize()(x), torch.tanh(original.mid(original.emb(x))),
                                   **TOL)
    with pytest.raises(IRError, match=r"head.weight shares it \(a tie\)"):
        fmap(captured, lambda s: ir.Tanh() if s.path == "emb" else None)

"""Trace sharing and mode reads, from review: instances share a trace only when what their forward reads is the
same object-for-object (a dict or float subclass carries attributes; ``self.dims is self.default`` tells equal
from identical); a forward that reads the training flag in a way a trace cannot keep (``is True``,
``isinstance``, a child's ``.training``) has its source copied; a ``forward`` set on the instance is refused."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.errors import CaptureError
from torchgraft.frontends.trace_reuse import TraceCache

XS = [torch.randn(2, 4, generator=torch.Generator().manual_seed(1)),
      torch.randn(5, 4, generator=torch.Generator().manual_seed(2))]


def _assert_same(model: nn.Module) -> None:
    em = torchgraft.emit(torchgraft.capture(model, (XS[0],))).materialize()
    for mode in (False, True):
        model.train(mode)
        em.train(mode)
        for x in XS:
            torch.testing.assert_close(em(x), model(x), rtol=1e-5, atol=1e-5)


class Cfg(dict):
    """A dict subclass carrying an attribute (``_plain`` keys only its items)."""


class Flt(float):
    """A float subclass carrying an attribute (``_plain`` keys only its value)."""


def _with(cls: type, base: object, **attrs: object) -> object:
    obj = cls(base)
    obj.__dict__.update(attrs)
    return obj


class ReadsCfg(nn.Module):
    def __init__(self, holder: object) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.cfg = holder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * (self.cfg.scale if not isinstance(self.cfg, dict) or isinstance(self.cfg, Cfg)
                              else self.cfg["scale"])


@pytest.mark.parametrize("cls,base", [(Cfg, {"a": 1}), (Flt, 1.0)])
def test_subclass_of_plain_value_with_own_attribute_is_not_shared(cls: type, base: object) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ReadsCfg(_with(cls, base, scale=1.0)), ReadsCfg(_with(cls, base, scale=3.0)))
    _assert_same(model)  # instance 2 takes instance 1's trace: scale 1.0 baked for both


SHARED_DIMS = [1, 2]


class ComparesIdentity(nn.Module):
    def __init__(self, same: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.dims, self.default = (SHARED_DIMS if same else [1, 2]), SHARED_DIMS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y * 2 if self.dims is self.default else y


def test_equal_but_not_identical_values_are_not_shared() -> None:
    torch.manual_seed(0)
    _assert_same(nn.Sequential(ComparesIdentity(True), ComparesIdentity(False)))  # key compares ==, trace read `is`


def test_the_above_pass_without_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: with TraceCache.lookup disabled the same models are faithful (so the reuse is the cause)."""
    monkeypatch.setattr(TraceCache, "lookup", lambda self, *a: (None, None))
    torch.manual_seed(0)
    _assert_same(nn.Sequential(ReadsCfg(_with(Cfg, {"a": 1}, scale=1.0)), ReadsCfg(_with(Cfg, {"a": 1}, scale=3.0))))
    _assert_same(nn.Sequential(ComparesIdentity(True), ComparesIdentity(False)))



class IsTrue(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 2 if self.training is True else self.lin(x)  # probe is never `True`: eval path only


class IsBool(IsTrue):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 2 if isinstance(self.training, bool) and self.training else self.lin(x)


class ChildMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        return self.lin(y) * 2 if self.bn.training else self.lin(y)  # a child's flag is baked at capture


@pytest.mark.parametrize("cls", [IsTrue, IsBool, ChildMode])
def test_mode_reads_the_probe_cannot_see(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    _assert_same(cls())


def test_instance_level_forward_override_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), ReadsCfg({"a": 1, "scale": 1.0}))
    model[1].forward = types.MethodType(lambda self, x: self.lin(x) * 3, model[1])  # eager runs this one
    with pytest.raises(CaptureError, match=r"1: forward set on the instance"):
        torchgraft.capture(model, (torch.randn(2, 4),))

"""One fx trace shared by instances of a class only where they provably trace alike (frontends.trace_reuse)."""

from __future__ import annotations

import importlib
import linecache
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.backends.torch.emitter import import_file
from torchgraft.frontends import trace_reuse
from torchgraft.frontends.self_reads import reads
from torchgraft.frontends.trace_reuse import TraceCache
from torchgraft.ir.nodes import PySource


class Block(nn.Module):
    """Instances differ in what the forward reads: a child None or not, a scale, an activation function."""

    def __init__(self, width: int, down: bool, scale: float = 1.0, act: Any = F.relu) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 1) if down else None
        self.scale, self.act = scale, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.conv(x)) * self.scale
        if self.down is not None:
            x = self.down(x)
        return out + self._shift(x)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale


class Gated(nn.Module):
    """A forward that reads a buffer's value while tracing (a Python bool of it: fx cannot trace that)."""

    def __init__(self, on: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("on", torch.tensor(on))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) if bool(self.on) else -x


SHARED = nn.ReLU()


class Aliased(nn.Module):
    """Calls a module through a global: fx names it by where it sits in the block, if anywhere."""

    def __init__(self, alias: bool) -> None:
        super().__init__()
        self.act = SHARED if alias else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SHARED(x)


class Shared(nn.Module):
    """Two names for one child: fx calls it by its first name."""

    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.a = nn.ReLU()
        self.b = self.a if tie else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x)


def _captures(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[str]]:
    """(capture with reuse, capture with every instance traced, classes of the instances that reused)."""
    hits: list[str] = []
    lookup = TraceCache.lookup

    def counting(self: TraceCache, mod: nn.Module, *rest: Any) -> Any:
        found = lookup(self, mod, *rest)
        if found[0] is not None:
            hits.append(type(mod).__name__)
        return found

    monkeypatch.setattr(TraceCache, "lookup", counting)
    shared = torchgraft.capture(model, (x,))
    monkeypatch.setattr(TraceCache, "lookup", lambda self, *a: (None, None))
    alone = torchgraft.capture(model, (x,))
    monkeypatch.setattr(TraceCache, "lookup", lookup)
    return shared, alone, hits


def _same(a: Any, b: Any) -> None:
    assert a.root == b.root and str(a) == str(b)


def test_instances_share_a_trace_only_when_what_the_forward_reads_is_equal(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(4, True), Block(4, False), Block(4, False), Block(4, False, 2.0),
                          Block(4, False, 2.0, torch.tanh), Block(4, False, -0.0), Block(4, False, 0.0))
    x = torch.randn(2, 4, 8, 8)
    shared, alone, hits = _captures(model, x, monkeypatch)
    _same(shared, alone)
    assert hits == ["Block"]  # only block 2 equals an earlier one (block 1); -0.0 and 0.0 print apart
    bodies = [shared.root.items[i].body for i in range(7)]
    assert bodies[1] == bodies[2] and len({repr(b) for b in bodies}) == 6
    emitted = import_file(torchgraft.emit(shared).save(tmp_path)).load().eval()
    torch.testing.assert_close(emitted(x), model(x), rtol=1e-5, atol=1e-5)  # float32, same kernels


def test_buffer_values_read_while_tracing_keep_traces_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(Gated(True), Gated(False), Gated(True))
    shared, alone, hits = _captures(model, torch.randn(2, 4), monkeypatch)
    _same(shared, alone)
    assert hits == []  # fx proxies buffer reads, so bool(self.on) sends each to the concrete trace: nothing shared
    assert all(isinstance(shared.root.items[i].body, PySource) for i in range(3))  # both branches kept


def test_module_reached_outside_self_or_under_two_names_is_traced_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for model in (nn.Sequential(Aliased(True), Aliased(True)), nn.Sequential(Shared(True), Shared(False))):
        shared, alone, hits = _captures(model, torch.randn(2, 4), monkeypatch)
        assert hits == [] and shared.root == alone.root


class Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self, x)

    @staticmethod
    def _call(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return owner.lin(x)


class Sub(Block):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class Prop(nn.Module):
    @property
    def k(self) -> int:
        return 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def test_reads_refuses_what_the_source_cannot_tell() -> None:
    assert set(reads(Block.forward) or ()) == {(("act",), "call"), (("conv",), "call"), (("scale",), "value"),
                                               (("down",), "none"), (("down",), "call"), (("_shift",), "call")}
    assert reads(Opaque.forward) is None  # self passed to a function
    assert reads(Sub.forward) is None  # super()
    assert reads(Prop.forward) is not None and trace_reuse.reuse_key(Prop(), (), ()) is None  # a property runs code
    assert trace_reuse.reuse_key(Block(2, False), ("mask",), ()) is None  # guards name the module's path


def test_source_edited_since_import_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = ("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
           "        self.a = 1.0\n        self.b = 2.0\n    def forward(self, x):\n        return x * self.{}\n")
    path = tmp_path / "edited_mod.py"
    path.write_text(src.format("a"))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("edited_mod")
    try:
        path.write_text(src.format("b"))  # same length, another attribute: the running code reads self.a
        linecache.checkcache(str(path))
        assert reads(mod.M.forward) is None
    finally:
        sys.modules.pop("edited_mod", None)


class Norm(nn.Module):
    """Reads its child's plain attribute and class attribute, its dims through a method, a weight's shape."""

    def __init__(self, eps: float, dims: tuple[int, ...], head: type[nn.Module] = nn.Identity) -> None:
        super().__init__()
        self.head = head()
        self.head.eps = eps
        self.dims = list(dims)
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(*self.dims) + self.head.eps + self.head.SCALE
        return self.head(x) * self.weight + self.weight.shape[0] + self.dims.index(0)


class Half(nn.Identity):
    SCALE = 0.5


class Twice(nn.Identity):
    SCALE = 2.0


def test_child_attributes_class_attributes_and_plain_methods_are_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(Norm(1e-5, (0, 1), Half), Norm(1e-5, (0, 1), Half), Norm(1e-6, (0, 1), Half),
                          Norm(1e-5, (1, 0), Half), Norm(1e-5, (0, 1), Twice))
    shared, alone, hits = _captures(model, torch.randn(4, 4), monkeypatch)
    _same(shared, alone)
    assert hits == ["Norm"]  # only the second: eps, dims and the child's class tell the others apart
    torch.testing.assert_close(torchgraft.emit(shared).materialize()(torch.ones(4, 4)), model(torch.ones(4, 4)))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "swin_t"])
def test_torchvision_models_capture_the_same_with_shared_traces(torchvision: Any, name: str,  # noqa: ANN401
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    shared, alone, hits = _captures(model, torch.randn(2, 3, 64, 64) if name != "swin_t" else
                                    torch.randn(1, 3, 224, 224), monkeypatch)
    _same(shared, alone)
    assert hits  # the repeated blocks shared their traces

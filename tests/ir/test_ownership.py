"""``ir.ownership``: state follows its nodes through an edit, and each pass's key map is derived from it.

Hand-built trees check ``follow``/``moved`` on the basic edits (an item removed, a layer wrapped, a
nested Chain spliced, a Block with a training forward rebuilt and moved). The real structural passes
run on captured models: the derived key map equals the map written out here by hand, the emitted
model loads the original weights re-keyed through it (``strict=True``) and computes what the eager
model computes, and ``verify`` holds after each pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.ir.nodes import Block, ChildRef, ClassRef, StateSpec
from torchgraft.ir.ownership import derived_key_map, follow, moved, owners
from torchgraft.ir.verify import verify
from torchgraft.passes import run
from torchgraft.passes.lora import load_original, lora_block

TOL: dict[str, Any] = {"atol": 1e-5, "rtol": 1e-5}


def test_item_removed_shifts_later_indices_and_their_state() -> None:
    conv, relu, lin = ir.Conv2d(3, 8, 3), ir.ReLU(), ir.Linear(8, 2)
    before = ir.Chain(conv, ir.Identity(), relu, lin)
    after = ir.Chain(conv, relu, lin)
    assert follow(before, after) == {"": "", "0": "0", "2": "1", "3": "2"}
    assert owners(before) == [("0", conv), ("3", lin)]
    w = {k: torch.randn(2) for k in ("0.weight", "0.bias", "3.weight", "3.bias")}
    model = ir.Model("m", before, types=(("1", ir.UNKNOWN), ("3", ir.UNKNOWN)), frozen=("3.weight",),
                     weights=w, constants={"3.table": torch.ones(1)}, extra_state={"3._extra_state": 1},
                     ties=(("3.weight", "0.weight"),))
    new = moved(model, after)
    assert list(new.weights) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert new.weights["2.weight"] is w["3.weight"]
    assert new.frozen == ("2.weight",) and dict(new.types) == {"2": ir.UNKNOWN}  # "1" was the Identity
    assert list(new.constants) == ["2.table"] and dict(new.extra_state) == {"2._extra_state": 1}
    assert new.ties == (("2.weight", "0.weight"),)
    assert derived_key_map(model, new) == {"3.weight": "2.weight", "3.bias": "2.bias"}


def test_wrap_in_a_new_parent_moves_the_layer_below_it() -> None:
    lin, relu = ir.Linear(4, 3), ir.ReLU()
    before = ir.Chain(lin, relu)
    after = ir.Chain(lora_block(lin, 2, 4.0), relu)
    assert follow(before, after) == {"": "", "0": "0.base", "1": "1"}
    model = ir.Model("m", before, weights={"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3)})
    a = torch.ones(2, 4)
    new = moved(model, after, weights={"0.lora_A.weight": a}, frozen=("0.lora_A.weight",))
    assert set(new.weights) == {"0.base.weight", "0.base.bias", "0.lora_A.weight"}
    assert new.weights["0.lora_A.weight"] is a and new.frozen == ("0.lora_A.weight",)
    root = ir.Model("r", lin, weights={"weight": torch.zeros(3, 4)})  # the root itself wrapped
    assert derived_key_map(root, moved(root, lora_block(lin, 2, 4.0))) == {"weight": "base.weight"}


def test_flatten_nested_chain_and_supplied_keys_win() -> None:
    conv, bn, relu, conv2 = ir.Conv2d(3, 8, 3), ir.BatchNorm2d(8), ir.ReLU(), ir.Conv2d(8, 8, 1)
    before = ir.Chain(ir.Chain(conv, bn), relu, ir.Chain(conv2))
    after = ir.Chain(conv, bn, relu, conv2)
    assert follow(before, after) == {"": "", "0.0": "0", "0.1": "1", "1": "2", "2.0": "3"}
    model = ir.Model("m", before, weights={"0.1.weight": torch.zeros(8), "2.0.weight": torch.zeros(8, 8, 1, 1)})
    new = moved(model, after, weights={"3.weight": torch.ones(8, 8, 1, 1)})
    assert set(new.weights) == {"1.weight", "3.weight"} and bool(new.weights["3.weight"].all())


def test_block_with_training_forward_rebuilt_and_moved_keeps_its_own_state() -> None:
    conv, relu = ir.Conv2d(3, 3, 1), ir.ReLU()
    block = Block(ClassRef("m", "Gate"), (("a", conv), ("b", relu), ("c", ir.Identity())),
                  ir.Chain(ChildRef("a"), ChildRef("b")), state=(StateSpec("scale", (3,)),),
                  train_body=ir.Chain(ChildRef("a"), ChildRef("c")))
    gelu = ir.GELU()
    rebuilt = replace(block, children=(("a", conv), ("b", gelu)), train_body=ir.Chain(ChildRef("a")))
    before, after = ir.Chain(ir.Identity(), block), ir.Chain(rebuilt)
    assert follow(before, after) == {"": "", "1": "0", "1.a": "0.a", "1.b": "0.b"}  # b: rebuilt in place
    assert owners(before) == [("1", block), ("1.a", conv)]
    model = ir.Model("m", before, weights={"1.scale": torch.ones(3), "1.a.weight": torch.ones(3, 3, 1, 1)})
    assert derived_key_map(model, moved(model, after)) == {"1.scale": "0.scale", "1.a.weight": "0.a.weight"}
    other = replace(block, cls=ClassRef("m", "Other"))  # a different class is a different node
    assert "1" not in follow(before, ir.Chain(ir.Chain(conv), other))


def test_one_object_at_several_paths_pairs_its_occurrences_in_order() -> None:
    lin = ir.Linear(2, 2)  # two modules (two sets of weights) written as one value
    before = ir.Chain(ir.Identity(), lin, lin)
    assert follow(before, ir.Chain(lin, lin)) == {"": "", "1": "0", "2": "1"}  # never swapped
    assert follow(before, ir.Chain(ir.ReLU(), lin, ir.ReLU(), lin)) == {"": "", "1": "1", "2": "3"}
    assert follow(before, ir.Chain(ir.Identity(), lin)) == {"": "", "0": "0", "1": "1"}  # the last one removed


# -- the real passes -------------------------------------------------------------------------------


def _emitted_loads(model: ir.Model, original: dict[str, torch.Tensor], key_map: dict[str, str]) -> nn.Module:
    """The emitted model, built fresh, loading the original state re-keyed through ``key_map`` (strict)."""
    module = torchgraft.emit(model).materialize(load_weights=False)
    module.load_state_dict({key_map.get(k, k): v for k, v in original.items()}, strict=True)
    return module


def _check(result: Any, expected: dict[str, str], before: ir.Model) -> None:
    verify(result.model)
    assert result.reports[0].keys_renamed == expected
    assert derived_key_map(before, result.model) == expected


@pytest.fixture(scope="module")
def resnet18(torchvision: Any) -> tuple[nn.Module, ir.Model, torch.Tensor]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    return net, torchgraft.capture(net, (x,)), x


def _desugar_map(net: nn.Module) -> dict[str, str]:
    """desugar on a BasicBlock ``L``: ``L.conv1.*`` -> ``L.0.body.conv1.*`` (``L.0.0.conv1.*`` beside a
    downsample, which goes to ``L.0.downsample.*``)."""
    out = {}
    for key in net.state_dict():
        parts = key.split(".")
        if not parts[0].startswith("layer"):
            continue
        blk, rest = ".".join(parts[:2]), ".".join(parts[2:])
        has_ds = f"{blk}.downsample.0.weight" in net.state_dict()
        if rest.startswith("downsample."):
            out[key] = f"{blk}.0.{rest}"
        else:
            out[key] = f"{blk}.0.0.{rest}" if has_ds else f"{blk}.0.body.{rest}"
    return out


def test_desugar_then_name_block_on_resnet18(resnet18: tuple[nn.Module, ir.Model, torch.Tensor]) -> None:
    net, model, x = resnet18
    first = run(model, "desugar{where=kind:BasicBlock}")
    expected = _desugar_map(net)
    _check(first, expected, model)
    emitted = _emitted_loads(first.model, net.state_dict(), expected).eval()
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), net(x), **TOL)
    second = run(first.model, "name-block{where=layer1.1.0 as=Res}")
    back = {v: "layer1.1.0." + v[len("layer1.1.0.body."):] for v in expected.values()
            if v.startswith("layer1.1.0.body.")}
    _check(second, back, first.model)
    both = {k: back.get(v, v) for k, v in expected.items()}
    emitted = _emitted_loads(second.model, net.state_dict(), both).eval()
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), net(x), **TOL)


class Gate(nn.Module):
    """Its own parameter, an Identity child, and a forward that differs in training."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(8))
        self.id = nn.Identity()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.fc(self.id(x)) * self.scale + 1
        return self.fc(self.id(x)) * self.scale


def test_cleanup_and_lora_on_a_captured_model_with_a_training_forward() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.Identity()), nn.Identity(), Gate(),
                        nn.Sequential(nn.ReLU(), nn.Linear(8, 4))).eval()
    x = torch.randn(3, 6)
    model = torchgraft.capture(net, (x,))
    sd = net.state_dict()
    steps = [
        ("eliminate-identity", {"2.scale": "1.scale", "2.fc.weight": "1.fc.weight", "2.fc.bias": "1.fc.bias",
                                "3.1.weight": "2.1.weight", "3.1.bias": "2.1.bias"}),
        ("flatten-chains", {"0.0.weight": "0.weight", "0.0.bias": "0.bias", "2.1.weight": "3.weight",
                            "2.1.bias": "3.bias"}),
        ("lora{r=2}", {"0.weight": "0.base.weight", "0.bias": "0.base.bias", "1.fc.weight": "1.fc.base.weight",
                       "1.fc.bias": "1.fc.base.bias", "3.weight": "3.base.weight", "3.bias": "3.base.bias"}),
    ]
    total = {k: k for k in sd}
    for pipeline, expected in steps:
        result = run(model, pipeline)
        _check(result, expected, model)
        assert not result.reports[0].keys_removed
        total = {k: expected.get(v, v) for k, v in total.items()}
        model = result.model
        if pipeline.startswith("lora"):
            emitted = torchgraft.emit(model).materialize(load_weights=False)
            load_original(emitted, sd, total)
            assert "1.scale" in model.weights
        else:
            emitted = _emitted_loads(model, sd, total)
        for mode in (False, True):  # eval and training forwards both kept
            net.train(mode)
            emitted.train(mode)
            with torch.no_grad():
                torch.testing.assert_close(emitted(x), net(x), **TOL)
    net.eval()


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_lora_on_a_shared_linear_moves_the_tie_to_the_shared_base() -> None:
    torch.manual_seed(0)
    net, x = Tied().eval(), torch.randn(2, 4)
    model = torchgraft.capture(net, (x,))
    assert model.ties == (("b", "a"),)
    result = run(model, "lora{r=2}")
    _check(result, {f"{m}.{p}": f"{m}.base.{p}" for m in "ab" for p in ("weight", "bias")}, model)
    assert result.model.ties == (("b.base", "a.base"),)  # the layer is shared, each site has its own adapter
    emitted = torchgraft.emit(result.model).materialize().eval()
    assert emitted.b.base is emitted.a.base and emitted.b is not emitted.a
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), net(x), **TOL)


class _Scale(nn.Module):
    """Own parameter and an Identity child (timm's drop_path): eliminate-identity rebuilds it."""

    def __init__(self, v: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((4,), v))
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(x * self.gamma)


def test_rebuilt_items_after_a_removed_identity_shift_with_it() -> None:
    model = nn.Sequential(_Scale(1.0), nn.Identity(), _Scale(2.0), _Scale(3.0)).eval()
    x = torch.randn(2, 4)
    result = torchgraft.passes.run(torchgraft.capture(model, (x,)), "eliminate-identity")
    assert {k: float(v[0]) for k, v in result.model.weights.items()} == {"0.gamma": 1.0, "1.gamma": 2.0,
                                                                          "2.gamma": 3.0}
    emitted = torchgraft.emit(result.model).materialize().eval()
    torch.testing.assert_close(emitted(x), model(x), rtol=1e-6, atol=1e-6)

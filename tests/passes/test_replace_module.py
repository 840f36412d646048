"""``replace-module``: BatchNorm -> GroupNorm / FrozenBatchNorm, activation modules, factories."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.ir.nodes import Block, Node
from torchgraft.ir.primitives import BatchNorm, Conv, GroupNorm, Primitive
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify
from torchgraft.passes import REGISTRY, Site, run
from torchgraft.passes.replace_module import ReplaceError, ReplaceModule


@pytest.fixture(scope="module")
def resnet(torchvision: Any) -> tuple[nn.Module, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    for m in net.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.get_buffer("running_mean").uniform_(-0.5, 0.5)
            m.get_buffer("running_var").uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    return net, x, torchgraft.capture(net, (x,))


def _nodes(model: torchgraft.ir.Model) -> dict[str, Node]:
    return dict(walk(model.root))


def test_batchnorm_to_groupnorm_resnet18(resnet: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, model = resnet
    monkeypatch.setitem(REGISTRY, ReplaceModule.name, ReplaceModule)
    result = run(model, "replace-module{from=batchnorm to=groupnorm groups=32}")
    new = result.model
    verify(new)
    rep = result.reports[0]
    assert len(rep.matches) == 20
    assert "BatchNorm2d(64) -> GroupNorm(32, 64)" in str(rep)
    removed = set(rep.keys_removed)
    assert {"bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
            "layer2.0.downsample.1.running_var"} <= removed
    assert all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in removed)
    assert len(removed) == 60 and not rep.keys_added and not rep.keys_renamed
    assert rep.params_before == rep.params_after
    nodes = _nodes(new)
    assert nodes["layer1.0.bn1"] == GroupNorm("GroupNorm", 32, 64)
    assert not any(isinstance(n, BatchNorm) for n in nodes.values())
    assert ReplaceModule(to="groupnorm").notes(model)  # says it changes semantics

    module: Any = torchgraft.emit(new).materialize().eval()
    sd = net.state_dict()
    assert set(module.state_dict()) == set(sd) - removed
    torch.testing.assert_close(module.layer3[1].bn2.weight, net.layer3[1].bn2.weight, rtol=0, atol=0)
    with torch.no_grad():
        out = module(x)
    assert out.shape == net(x).shape and torch.isfinite(out).all()
    # the returned layers are real GroupNorms with the BN's affine parameters
    gn = nn.GroupNorm(32, 64)
    gn.load_state_dict({"weight": sd["bn1.weight"], "bias": sd["bn1.bias"]})
    probe = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(module.bn1(probe), gn(probe))


def test_groupnorm_group_count_divides_channels() -> None:
    net = nn.Sequential(nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24), nn.Conv2d(24, 6, 1), nn.BatchNorm2d(6))
    model = torchgraft.capture(net, (torch.randn(2, 3, 4, 4),))
    new, _ = ReplaceModule(to="groupnorm", groups=16).rewrite(model)
    verify(new)
    nodes = _nodes(new)
    assert nodes["1"] == GroupNorm("GroupNorm", 12, 24) and nodes["3"] == GroupNorm("GroupNorm", 6, 6)


def test_batchnorm_to_frozen_batchnorm_resnet18(resnet: Any) -> None:
    net, x, model = resnet
    result = run(model, [ReplaceModule(to="frozenbatchnorm")])
    new = result.model
    verify(new)
    rep = result.reports[0]
    assert len(rep.matches) == 20
    assert rep.keys_removed == sorted(k for k in model.weights if k.endswith("num_batches_tracked"))
    assert not rep.keys_added and not rep.keys_renamed
    assert rep.params_before - rep.params_after == sum(m.weight.numel() * 2 for m in net.modules()
                                                        if isinstance(m, nn.BatchNorm2d))  # now buffers
    frozen = _nodes(new)["layer2.0.downsample.1"]
    assert isinstance(frozen, Block) and frozen.cls.name == "FrozenBatchNorm2d"
    assert [s.name for s in frozen.state] == ["weight", "bias", "running_mean", "running_var"]
    assert not any(s.parameter for s in frozen.state)

    code = torchgraft.emit(new)
    assert "class FrozenBatchNorm2d(nn.Module)" in code.source
    assert "return x * scale + shift" in code.source
    module: Any = code.materialize().eval()
    sd = module.state_dict()
    for key in ("layer1.0.bn1.running_mean", "layer1.0.bn1.running_var", "layer4.1.bn2.weight", "bn1.bias"):
        torch.testing.assert_close(sd[key], net.state_dict()[key], rtol=0, atol=0)  # statistics carried
    assert set(sd) == {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        ref, out = net(x), module(x)
    torch.testing.assert_close(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)
    # the same computation as torchvision's FrozenBatchNorm2d
    from torchvision.ops import FrozenBatchNorm2d

    tv = FrozenBatchNorm2d(64)
    tv.load_state_dict({k.removeprefix("bn1."): v for k, v in net.state_dict().items()
                        if k.startswith("bn1.") and "num_batches" not in k})
    probe = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(module.bn1(probe), tv(probe))


def test_activation_modules_only(resnet: Any) -> None:
    _, _, model = resnet
    new, matches = ReplaceModule(from_="relu", to="gelu", where="layer1.*").rewrite(model)
    verify(new)
    assert [m.path for m in matches] == ["layer1.0.relu", "layer1.1.relu"]
    nodes = _nodes(new)
    assert nodes["layer1.0.relu"].op == "GELU" and nodes["relu"].op == "ReLU"  # type: ignore[union-attr]
    assert "nn.GELU()" in torchgraft.emit(new).source


def test_factory_gets_tensors_and_returns_new_node(resnet: Any) -> None:
    net, x, model = resnet
    seen: list[tuple[str, list[str]]] = []

    def widen(site: Site, tensors: dict[str, torch.Tensor]) -> tuple[Node, dict[str, torch.Tensor]] | None:
        node = site.node
        if not isinstance(node, Conv) or node.kernel_size != (1, 1):
            return None
        seen.append((site.path, sorted(tensors)))
        return Conv("Conv2d", node.in_channels, node.out_channels, (1, 1), node.stride, (0, 0), (0, 0),
                    (1, 1), 1, True, "zeros"), {"weight": tensors["weight"] * 2, "bias": torch.zeros(node.out_channels)}

    new, matches = ReplaceModule(where="layer*", factory=widen).rewrite(model)
    verify(new)
    assert seen == [(p, ["weight"]) for p in ("layer2.0.downsample.0", "layer3.0.downsample.0",
                                              "layer4.0.downsample.0")]
    assert [m.path for m in matches] == [p for p, _ in seen]
    assert new.weights["layer2.0.downsample.0.bias"].shape == (128,)
    torch.testing.assert_close(new.weights["layer2.0.downsample.0.weight"],
                               2 * model.weights["layer2.0.downsample.0.weight"])
    assert new.weights["layer1.0.conv1.weight"] is model.weights["layer1.0.conv1.weight"]


def test_factory_output_checked_and_option_errors(resnet: Any) -> None:
    _, _, model = resnet

    def bad(site: Site, tensors: dict[str, torch.Tensor]) -> tuple[Node, dict[str, torch.Tensor]]:
        return GroupNorm("GroupNorm", 1, 64), {}

    with pytest.raises(ReplaceError, match=r"bn1: .*missing \['bias', 'weight'\]"):
        ReplaceModule(where="bn1", factory=bad).rewrite(model)
    for opts in ({}, {"to": "nonsense"}, {"from_": "conv2d", "to": "groupnorm"}, {"to": "identity"},
                 {"from_": "conv2d", "to": "gelu"}, {"to": "groupnorm", "groups": 0}):
        with pytest.raises(ReplaceError):
            ReplaceModule(**opts).rewrite(model)


def test_identity_and_untouched_model(resnet: Any) -> None:
    _, _, model = resnet
    new, matches = ReplaceModule(where="layer4.1", to="identity").rewrite(model)
    verify(new)
    assert [m.path for m in matches] == ["layer4.1"] and not any(k.startswith("layer4.1.") for k in new.weights)
    same, none = ReplaceModule(from_="bottleneck", to="identity").rewrite(model)
    assert same is model and none == []
    assert isinstance(_nodes(model)["bn1"], Primitive)

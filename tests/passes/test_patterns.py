"""The pattern API: RepVGG reparameterisation and Chain windows, numerically checked."""

from __future__ import annotations

import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.examples.repvgg import RepVGGNet, reparameterize
from torchgraft.ir.verify import verify
from torchgraft.passes.patterns import Cap, Kind, Seq, rewrite


def _randomize_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)


def test_repvgg_branches_fold_into_one_conv() -> None:
    net = RepVGGNet().eval()
    _randomize_bn(net)
    x = torch.randn(2, 3, 16, 16)
    model = torchgraft.capture(net, (x,))
    fused, sites = reparameterize(model)
    verify(fused)
    assert [s.path for s in sites] == ["blocks.0", "blocks.1", "blocks.2"]
    source = torchgraft.emit(fused).source
    assert "BatchNorm" not in source and "RepVGGBlock" not in source
    rebuilt = torchgraft.emit(fused).materialize().eval()
    assert sorted(k for k in rebuilt.state_dict() if k.startswith("blocks.0")) == ["blocks.0.conv.bias",
                                                                                   "blocks.0.conv.weight"]
    ref = net(x)
    torch.testing.assert_close(rebuilt(x), ref, atol=1e-5 * ref.abs().max().item(), rtol=0)


def test_seq_pattern_over_sequential_windows_keeps_later_keys() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    model = torchgraft.capture(net, (torch.randn(1, 3, 8, 8),))
    pattern = Seq(Cap("conv", Kind("Conv")), Kind("BatchNorm"), Cap("act", Kind("Activation")))
    seen = []

    def builder(m):  # noqa: ANN001, ANN202
        seen.append(m.paths)
        return m.nodes["conv"], m.tensors["conv"]

    new, sites = rewrite(model, pattern, builder)
    assert seen == [{"conv": "0", "act": "2"}] and [s.path for s in sites] == ["0"]
    assert [type(i).__name__ for i in new.root.items] == ["Conv", "Identity", "Identity", "Conv"]
    assert set(new.weights) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    verify(new)


def test_no_match_leaves_model_unchanged() -> None:
    model = torchgraft.capture(nn.Sequential(nn.Linear(3, 3)), (torch.randn(2, 3),))
    new, sites = rewrite(model, Seq(Kind("Conv"), Kind("BatchNorm")), lambda m: None)
    assert sites == [] and new.root == model.root
    assert isinstance(new.root, ir.Chain)

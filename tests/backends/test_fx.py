"""To and from ``torch.fx.GraphModule``: same outputs, same state_dict keys."""

from __future__ import annotations

import torch

import torchgraft
from torchgraft.backends.fx import from_fx, to_fx
from torchgraft.examples.nets import example


def test_to_fx_computes_the_same() -> None:
    net, args = example()
    gm = to_fx(torchgraft.capture(net, args))
    assert isinstance(gm, torch.fx.GraphModule) and not gm.training
    assert list(gm.state_dict()) == list(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(gm(*args), net(*args))
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert "blocks.0.conv1" in targets


def test_from_fx_round_trips() -> None:
    net, args = example()
    gm = torch.fx.symbolic_trace(net)
    model = from_fx(gm, args)
    assert model.name == "Net" and model.type_at("") == torchgraft.capture(net, args).type_at("")
    emitted = torchgraft.emit(model).materialize().eval()
    assert list(emitted.state_dict()) == list(net.state_dict())
    report = torchgraft.check(net, emitted, args, modes=("eval",))
    assert report.ok, report
    assert type(gm.get_submodule("blocks")) is torch.nn.Module  # the user's GraphModule is not changed

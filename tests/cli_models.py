"""Model specs for the CLI tests: ``tests.cli_models:small_net`` and friends."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from torchgraft.examples.nets import Net, example


def small_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The bundled residual CNN and an example batch (seeded, eval mode)."""
    return example()


def model_only() -> nn.Module:
    """The same network without example inputs (needs ``--input``)."""
    torch.manual_seed(0)
    return Net().eval()


def with_kwargs() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """(model, args, kwargs): a Linear with a keyword input."""

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.fc(x) * scale

    torch.manual_seed(0)
    return Scale(), (torch.randn(2, 4),), {"scale": 2.0}


class Broken(nn.Module):
    """A model that fails on any input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(-1, 3))


def broken() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A spec whose model does not run on its own example inputs."""
    return Broken(), (torch.randn(2, 4),)


def not_a_model() -> int:
    """A callable that returns something other than a model."""
    return 42


def weird_names() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A Sequential whose item names hold quotes, a newline, angle brackets, braces and a backslash."""
    names = ['a"b', "c\nd", "<e>&", "f{g}|h", "i\\j", "end"]
    layers = [nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Identity()]
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(zip(names, layers, strict=True))).eval(), (torch.randn(2, 4),)

"""Generalising instances into one class (small models), and wrapping long lines."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.backends.torch.emitter import import_file
from torchgraft.backends.torch.roundtrip import first_difference, normal_form
from torchgraft.backends.torch.wrap import wrap


class Down(nn.Module):
    """Channels, stride, a dropout probability and an optional projection vary between instances."""

    def __init__(self, cin: int, cout: int, stride: int, p: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.proj is None else self.proj(x)
        return F.dropout(self.bn(self.conv(x)), self.p, self.training) + identity


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Down(4, 8, 2, 0.1), Down(8, 8, 1, 0.2), Down(8, 8, 1, 0.3), Down(8, 16, 2, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean((2, 3))


def test_instances_become_one_class_with_arguments(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(2, 4, 16, 16)
    ir_model = torchgraft.capture(model, (x,))
    code = torchgraft.emit(ir_model)
    assert re.findall(r"^class (\w+)", code.source, re.M) == ["Down", "Stack"]
    init = code.source[code.source.index("def __init__"):code.source.index(") -> None:")]
    assert all(p in init for p in ("in_channels", "out_channels", "stride", "p: float", "proj: bool = False"))
    assert "self.proj(x) if self.proj is not None else x" in code.source
    assert "F.dropout(" in code.source and "self.p" in code.source
    rebuilt = import_file(code.save(tmp_path)).load()
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    for training in (False, True):
        a, b = copy.deepcopy(model).train(training), copy.deepcopy(rebuilt).train(training)
        torch.manual_seed(1)
        expected = a(x)
        torch.manual_seed(1)
        torch.testing.assert_close(b(x), expected, rtol=1e-6, atol=1e-6)
    recaptured = torchgraft.capture(rebuilt.eval(), (x,))
    assert first_difference(normal_form(ir_model), normal_form(recaptured)) is None


def test_wrap_splits_at_brackets_outside_strings() -> None:
    line = ("        out = torch._assert(x.dim() == 3, 'message with (brackets), [commas] and {braces}', "
            "other=self.layer(x, y, z)[0])")
    lines = wrap(line, 70)
    assert len(lines) > 1 and all(len(ln) <= 70 for ln in lines)
    assert ast.dump(ast.parse("\n".join(lines).strip())) == ast.dump(ast.parse(line.strip()))
    assert wrap("x = f(a)", 60) == ["x = f(a)"]
    sub = wrap("y = x[" + ", ".join(f"v{i}" for i in range(30)) + "]", 40)
    assert ast.dump(ast.parse("\n".join(sub))) == ast.dump(ast.parse("y = x[" + ", ".join(
        f"v{i}" for i in range(30)) + "]"))

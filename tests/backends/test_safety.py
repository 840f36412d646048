"""Names that come from a model never become code, and torchgraft never evaluates strings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft import ir
from torchgraft.backends.torch.emitter import import_file
from torchgraft.backends.torch.roundtrip import first_difference, normal_form

PAYLOAD = 'x"); open("PWNED", "w").write("1"); ("'
DOTLESS = 'x"); open("PWNED", "w"); ("'  # torch refuses "." in module names; this one it accepts
KEYS = [DOTLESS, "class", "1st layer", "self", "torch", "two\nlines", "caf\u00e9", "nn", "F", "super", "_", "__init"]


class Keywords(nn.Module):
    """Members named like keywords and builtins, registered with add_module/register_parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("class", nn.Linear(4, 4))
        self.add_module("lambda", nn.Tanh())
        self.register_parameter("def", nn.Parameter(torch.full((4,), 0.5)))
        self.register_buffer("import", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, "lambda")(getattr(self, "class")(x))
        return y * getattr(self, "def") + getattr(self, "import")


class Hostile(nn.Module):
    """A ModuleDict whose keys try to break out of string literals and identifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({k: nn.Linear(4, 4) for k in KEYS})
        self.keywords = Keywords()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = torch.relu(layer(x))
        return self.keywords(x)


def test_hostile_names_stay_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = Hostile().eval()
    x = torch.randn(3, 4)
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    assert _names_called(code.source) <= SAFE_CALLS, _names_called(code.source) - SAFE_CALLS
    assert "two\nlines" not in code.source and code.source.isascii()
    rebuilt = import_file(code.save(tmp_path / "out")).load().eval()
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    recaptured = torchgraft.capture(rebuilt, (x,))
    assert first_difference(normal_form(torchgraft.capture(model, (x,))), normal_form(recaptured)) is None
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out" / "PWNED").exists()
    assert not Path("PWNED").exists()


SAFE_CALLS = {"super", "build", "load_file", "str", "Path", "setattr", "Hostile", "Keywords"}


def _names_called(source: str) -> set[str]:
    """Plain names the code calls (``open(...)`` would show up here; ``nn.Linear`` would not)."""
    return {n.func.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def test_a_name_torch_refuses_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The payload with dots can only be smuggled into ``_modules``: capture stops with an error,
    and a hand-built IR holding it emits a literal that torch refuses at build time."""
    monkeypatch.chdir(tmp_path)
    model = Hostile()
    model.layers._modules[PAYLOAD] = nn.Linear(4, 4)
    with pytest.raises(torchgraft.TorchgraftError):
        torchgraft.capture(model, (torch.randn(2, 4),))
    tree = ir.Chain(ir.Container("ModuleDict", ((PAYLOAD, ir.LinearLayer(4, 4)),)), ir.Identity())
    code = torchgraft.emit(ir.Model("Hostile", tree))
    assert _names_called(code.source) <= SAFE_CALLS
    with pytest.raises(KeyError, match="module name"):
        code.materialize(load_weights=False)
    assert not (tmp_path / "PWNED").exists()


def _calls(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__"):
                found.append((f.id, node.lineno))
            elif isinstance(f, ast.Attribute) and (f.attr == "exec_module" or (
                    isinstance(f.value, ast.Name) and f.value.id == "builtins")):
                found.append((f.attr, node.lineno))
    return found


def test_torchgraft_never_evaluates_strings() -> None:
    """No eval/exec/compile anywhere; the only exec_module runs the emitted model.py (``import_file``),
    and ``__import__`` only looks up allow-listed standard-library modules."""
    root = Path(torchgraft.__file__).parent
    allowed = {("backends/torch/emitter.py", "exec_module"), ("frontends/helpers.py", "__import__")}
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for name, line in _calls(ast.parse(path.read_text(), rel)):
            if (rel, name) not in allowed:
                bad.append(f"{rel}:{line} {name}")
    assert not bad, bad

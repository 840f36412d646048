"""Emitted source is formatted (issue 12): ``ruff format --isolated --check`` and ``ruff check`` (E, F, W;
long lines aside) are clean on the golden models, strings from a model are quoted as ruff does, and the
formatting step never changes what the code means.
"""

from __future__ import annotations

import ast
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from zoo import assert_formatted, import_torchvision, ruff_problems

import torchgraft
from tests.frontends.fresh import run_emitted
from torchgraft.backends.torch import formatting
from torchgraft.backends.torch.emitter import emit
from torchgraft.backends.torch.exprs import slice_code
from torchgraft.backends.torch.formatting import FormatWarning, formatted, same_code
from torchgraft.backends.torch.names import str_lit
from torchgraft.examples.nets import example

transformers = pytest.importorskip("transformers")
IDS = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(0))


def _golden_models() -> dict[str, tuple[nn.Module, tuple[Any, ...], dict[str, Any]]]:
    """The models of tests/golden, built as test_emit.py and test_readable.py build them."""
    tv = import_torchvision()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net, args = example()
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)).eval()
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)).eval()
    return {"net": (net, args, {}), "resnet18": (tv.models.resnet18().eval(), (x,), {}),
            "mobilenet_v2": (tv.models.mobilenet_v2().eval(), (x,), {}),
            "bert": (bert, (), {"input_ids": IDS}), "llama": (llama, (), {"input_ids": IDS})}


def test_golden_models_are_ruff_format_and_lint_clean(tmp_path: Path) -> None:
    files = []
    for name, (model, args, kwargs) in _golden_models().items():
        m = torchgraft.capture(model, args, kwargs)
        code = emit(m)
        raw = emit(m, formatted=False).source
        assert same_code(raw, code.source), name  # formatting changed layout only
        assert formatted(code.source) == code.source, name  # stable: formatting it again changes nothing
        files.append(tmp_path / f"{name}_model.py")
        files[-1].write_text(code.source)
    assert_formatted(*files)


def test_golden_files_are_clean() -> None:
    goldens = sorted((Path(__file__).resolve().parents[1] / "golden").glob("*_model.py"))
    assert len(goldens) == 5
    assert_formatted(*goldens)


def test_a_badly_laid_out_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = {'a':1}\n")
    problems = ruff_problems(bad)
    assert "ruff format" in problems and "ruff check" in problems and "F401" in problems


class _Named(nn.Module):
    """Children whose names are no identifiers: they become string literals, quoted as ruff does."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"it's": nn.Linear(4, 4), 'say "hi"': nn.Linear(4, 4), "caf\xe9": nn.Linear(4, 4)})
        self.named = nn.Sequential(OrderedDict([("block-0", nn.Linear(4, 8)), ("act 1", nn.ReLU()),
                                                ("out", nn.Linear(8, 4))]))
        self.plain = nn.Sequential(OrderedDict([("fc", nn.Linear(4, 4)), ("act", nn.Tanh())]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.plain(self.named(x))
        y = self.heads["it's"](x) * self.heads['say "hi"'](x)
        return x + y - self.heads["caf\xe9"](x)[:, 1 : x.size(1) - 1].sum()


def test_names_from_a_model_are_clean_literals_and_the_model_round_trips(tmp_path: Path) -> None:
    model = _Named().eval()
    x = torch.randn(3, 4)
    code = torchgraft.emit(torchgraft.capture(model, (x,)))
    assert "OrderedDict(fc=nn.Linear(4, 4), act=nn.Tanh())" in code.source  # identifier keys: keywords
    assert '"block-0": nn.Linear(4, 8)' in code.source and "'say \"hi\"'" in code.source
    assert code.source.isascii()
    code.save(tmp_path)
    assert_formatted(tmp_path / "model.py")
    rebuilt = code.materialize()
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    outs, _ = run_emitted(tmp_path, {"x": x})  # a new process, without torchgraft
    with torch.no_grad():
        torch.testing.assert_close(outs["eval.x"], model(x), rtol=1e-5, atol=1e-6)


def test_str_lit_quotes_like_ruff_and_keeps_the_text() -> None:
    for text in ["plain", "it's", 'say "hi"', "\"'", "a\\b\n\t\x00\x7f", "caf\xe9 \u2603 \U0001f600", ""]:
        lit = str_lit(text)
        assert ast.literal_eval(lit) == text and lit.isascii()
        assert lit[0] == ("'" if text.count('"') > text.count("'") else '"')


def test_slice_spacing() -> None:
    assert slice_code("0", "dim + 0", "") == "0 : dim + 0"
    assert slice_code("", "q.size(-1) // 2", "") == ": q.size(-1) // 2"
    assert slice_code("q.size(-1) // 2", "", "") == "q.size(-1) // 2 :"
    assert slice_code("a + 1", "", "2") == "a + 1 :: 2"
    assert slice_code("-1", "", "") == "-1:" and slice_code("1", "n", "2") == "1:n:2"


def test_without_ruff_the_writers_text_is_kept_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    net, args = example()
    m = torchgraft.capture(net, args)
    monkeypatch.setattr(formatting, "ruff_executable", lambda: None)
    with pytest.warns(FormatWarning, match="ruff is not installed"):
        code = emit(m)
    assert code.source == emit(m, formatted=False).source


def test_a_formatter_that_changes_meaning_is_not_trusted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "ruff"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(sys.stdin.read().replace('+', '-'))\n")
    fake.chmod(0o755)
    monkeypatch.setattr(formatting, "ruff_executable", lambda: str(fake))
    with pytest.warns(FormatWarning, match="changed the meaning"):
        assert formatted("x = 1 + 2\n") == "x = 1 + 2\n"


def test_same_code_ignores_layout_and_docstrings_only() -> None:
    assert same_code('def f():\n    """a\n      b"""\n    return (1 +\n 2)\n',
                     'def f():\n    """a\n    b"""\n    return 1 + 2\n')
    assert not same_code("x = 'a'\n", "x = 'b'\n")
    assert not same_code("x = (\n", "x = 1\n")

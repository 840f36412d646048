"""``docs/passes/*.md`` are generated from the registry (``docs/generate.py``) and kept up to date."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from torchgraft.passes import REGISTRY
from torchgraft.passes.pipeline import option_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generating_writes_one_page_per_registered_pass(generate: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "retired-pass.md").write_text("a pass that is no longer registered")
    written = generate.write(tmp_path)
    assert {p.name for p in written} == {f"{n}.md" for n in REGISTRY} | {"index.md"}
    assert {p.name for p in tmp_path.glob("*.md")} == {p.name for p in written}
    index = (tmp_path / "index.md").read_text()
    for name, cls in REGISTRY.items():
        text = (tmp_path / f"{name}.md").read_text()
        assert text.splitlines()[2] == f"# `{name}`"
        assert f"[`{name}`]({name}.md)" in index
        for f in dataclasses.fields(cls):
            option = option_name(f.name)  # from_ -> from, as_ -> as
            assert f"| `{option}` |" in text, (name, option)
        if not dataclasses.fields(cls):
            assert "## Options\n\nNone." in text
    swap = (tmp_path / "swap-activation.md").read_text()
    assert "| `from` | str | `'relu'` |" in swap and "| `negative_slope` | float \\| None | `None` |" in swap
    assert "```text\nself.relu = nn.ReLU(inplace=True)" in swap  # the docstring's before/after block
    assert "``" not in swap.replace("```", "")  # reST literals became Markdown
    assert "no text form" in (tmp_path / "replace-module.md").read_text()  # factory= is Python only
    assert "## Selectors" in index and "`in:Bottleneck`" in index
    assert generate.stale(tmp_path) == []
    (tmp_path / "lora.md").write_text("edited by hand")
    assert generate.stale(tmp_path) == ["lora.md"]


def test_committed_pages_are_up_to_date(generate: ModuleType) -> None:
    stale = generate.stale()
    assert not stale, f"docs/passes is out of date ({', '.join(stale)}): run `python docs/generate.py`"


def test_check_flag(generate: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    assert "run python docs/generate.py" in capsys.readouterr().err
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0

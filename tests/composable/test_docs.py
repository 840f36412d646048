"""``docs/composable.md`` runs: its python blocks in order (one namespace), and its plan table is current."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "composable.md"


def test_python_blocks_run_and_the_printed_plan_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {"__name__": "composable_docs"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, code in enumerate(blocks):  # each from a file, as a user's script, sharing the page's names
            script = tmp_path / f"block_{i}.py"
            script.write_text(code)
            exec(compile(code, str(script), "exec"), namespace)  # the page's own code
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    table = re.search(r"```text\n(.*?)```", text, flags=re.S)
    assert table is not None and table.group(1) in printed, "docs/composable.md's plan table is out of date"
    source = (tmp_path / "out" / "model.py").read_text()
    assert "def forward(self, image: Tensor, text: Tensor, label: Tensor)" in source

"""The README's examples run: every ```python block, and the CLI lines of the quick start."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from torchgraft.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks("python")
    assert blocks, "README has no python example"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, code in enumerate(blocks):  # each block from a file, as a user's script (its source can be read)
            script = tmp_path / f"readme_{i}.py"
            script.write_text(code)
            exec(compile(code, str(script), "exec"), {"__name__": "readme"})  # the README's own code
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "swap-activation" in out and "check: ok" in out
    assert (tmp_path / "out" / "model.py").exists()


def test_quick_start_cli_lines_run(tmp_path: Path) -> None:
    lines = [ln for block in _blocks("bash") for ln in block.splitlines()
             if ln.startswith("torchgraft rewrite torchgraft.examples")]
    assert len(lines) == 3
    for line in lines:
        argv = shlex.split(line.split("#")[0])[1:]
        argv = [str(tmp_path / a) if a.startswith("out/") else a for a in argv]
        assert main(argv) == 0, line

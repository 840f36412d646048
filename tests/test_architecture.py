"""Dependencies point one way (frontends -> ir <- passes, backends -> ir): the import-linter
contracts in setup.cfg hold, and nothing under ir/ imports torch.fx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def test_ir_does_not_import_torch_fx() -> None:
    for path in (ROOT / "torchgraft" / "ir").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from torch\.fx|import torch\.fx|from torch import fx)", text, re.M), path

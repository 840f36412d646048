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


def test_only_the_ir_reads_meaning_from_function_names() -> None:
    """What an op computes is decided by ``ir/opkinds.py`` (and the activation table), not by comparing
    qualified names elsewhere: outside ``ir/`` a qualname is only split to be spelled or named, never
    compared (``qualname == "operator.add"``, ``qualname.startswith("helpers.")``, ``qualname in {...}``)."""
    compare = re.compile(r"qualname\s*(==|!=|\bin\b|\bnot in\b)|qualname\.(startswith|endswith)\(")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in (ROOT / "torchgraft").rglob("*.py") if "ir" not in path.relative_to(ROOT).parts[1:2]
             for n, line in enumerate(path.read_text().splitlines(), 1) if compare.search(line)]
    assert not found, "\n".join(found)


def test_every_package_folder_is_a_package() -> None:
    """A folder without ``__init__.py`` is a namespace package: import-linter does not see its modules (the
    contracts above then check nothing there) and setuptools' ``find_packages`` does not install it."""
    folders = {p.parent for p in (ROOT / "torchgraft").rglob("*.py")}
    missing = [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()]
    assert not missing, missing

"""docs/system.md runs: every ```python block, in order, in one namespace, from a scratch folder."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.zoo import import_torchvision

DOC = Path(__file__).resolve().parents[2] / "docs" / "system.md"


def test_system_doc_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import_torchvision()  # the fine-tuning example imports torchvision (CPU-only build here)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    cwd = os.getcwd()
    os.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "system_doc"}
    try:
        for i, code in enumerate(blocks):  # each block from a file, as a user's script
            script = tmp_path / f"doc_{i}.py"
            script.write_text(code)
            exec(compile(code, str(script), "exec"), namespace)  # the doc's own code
    finally:
        os.chdir(cwd)
        sys.modules.pop("system", None)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tuple(f"discriminator.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias")))
    assert out[1] == "{'generator': 'generator_loss', 'discriminator': 'discriminator_loss'}"
    assert out[2].startswith("{'generator': ") and "'discriminator': " in out[2]
    assert out[3] == "{'classifier': ('classifier.fc.lora_A.weight', 'classifier.fc.lora_B.weight')}"
    assert (tmp_path / "out" / "system.py").exists() and (tmp_path / "out" / "weights.safetensors").exists()

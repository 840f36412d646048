"""``emit(model)``: the whole ``model.py`` plus weights, and loading it back."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from torchgraft.backends.torch.classes import ClassTable
from torchgraft.backends.torch.combinators import RUNTIME_CLASSES
from torchgraft.backends.torch.modules import accessor, module_expr
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Parallel, SkipConnection
from torchgraft.ir.traverse import walk

WEIGHTS = "weights.safetensors"
CONSTANTS = "constants.safetensors"


@dataclass
class EmittedCode:
    """Emitted source and the weights it loads. ``save(dir)`` writes both; ``materialize()`` builds it."""

    source: str
    weights: Mapping[str, torch.Tensor] = field(repr=False)
    class_name: str = "Model"
    constants: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.py`` and ``weights.safetensors`` into ``directory``; returns the model.py path."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.py").write_text(self.source)
        if self.weights:
            save_file(_unshared(self.weights), str(out / WEIGHTS))
        if self.constants:
            save_file(_unshared(self.constants), str(out / CONSTANTS))
        return out / "model.py"

    def materialize(self, load_weights: bool = True, device: str | torch.device | None = None) -> nn.Module:
        """Import the emitted source and return the model, with the captured weights loaded.

        ``load_weights=False`` returns ``build()`` (fresh initialisation); ``device="meta"``
        builds without allocating memory (for checking structure and state_dict keys).
        """
        with tempfile.TemporaryDirectory() as tmp:
            if load_weights:
                path = self.save(tmp)
            else:
                path = Path(tmp) / "model.py"
                path.write_text(self.source)
            module = import_file(path)
            with torch.device(device) if device is not None else contextlib.nullcontext():
                if load_weights and self.weights:
                    return module.load(Path(tmp) / WEIGHTS)  # type: ignore[no-any-return]
                if self.constants:
                    from safetensors.torch import save_file

                    save_file(_unshared(self.constants), str(Path(tmp) / CONSTANTS))
                return module.build()  # type: ignore[no-any-return]


def import_file(path: Path) -> Any:
    """Import a Python file under a fresh module name."""
    name = f"torchgraft_emitted_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _unshared(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in weights.items():
        t = v.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        out[k] = t.contiguous().clone() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    return out


def _tie_lines(model: Model) -> list[str]:
    reach = accessor(model.root, "self")
    return [f"{reach(alias)} = {reach(target)}" for alias, target in model.ties]


def emit(model: Model) -> EmittedCode:
    """Write ``model`` as a standalone ``model.py`` (torch + safetensors only).

    With no pass applied, the emitted model's state_dict keys are exactly the
    original's and its outputs match.
    """
    table = ClassTable()
    for h in model.helpers:
        name = h.name.split(":", 1)[-1]
        table.names.reserve(name)
        table.reserved.add(name)
    for name in RUNTIME_CLASSES:
        table.names.reserve(name)
    if isinstance(model.root, Block):
        table.extra_init[id(model.root)] = _tie_lines(model)
        root_expr = table.class_of(model.root, "")
        root_name = root_expr[:-2]
    else:
        root_expr = module_expr(model.root, table.class_of, "", 4)
        root_name = "nn.Module"
    runtime = [src for name, src in RUNTIME_CLASSES.items()
               if any(isinstance(n, SkipConnection if name == "SkipConnection" else Parallel) for _, n in walk(model.root))]
    source = _assemble(model, table, runtime, root_expr, root_name)
    return EmittedCode(source, dict(model.weights), root_name, dict(model.constants))


def _assemble(model: Model, table: ClassTable, runtime: list[str], root_expr: str, root_name: str) -> str:
    root_expr = root_expr.replace("\n", "\n    ")
    origin = model.report and getattr(model.report, "origin", "") or model.name
    head = [f'"""Emitted by torchgraft from {_safe_doc(origin)}. Needs only torch and safetensors."""\n\n']
    std = sorted({"collections" if "OrderedDict" in d else "" for d in table.defs} - {""})
    imports = ["from pathlib import Path\n"]
    if any("OrderedDict(" in d for d in table.defs) or "OrderedDict(" in root_expr:
        imports.append("from collections import OrderedDict\n")
    helper_imports = sorted({h.source for h in model.helpers if h.name.startswith("import:")})
    imports += [f"import {m}\n" for m in sorted(table.imports - {"torch"})]
    del std
    imports += ["\nimport torch\n", "import torch.nn.functional as F\n", "from torch import Tensor, nn\n"]
    opaque = [f"from {m} import {q.split('.')[0]}{'' if a == q.split('.')[0] else ' as ' + a}\n"
              for (m, q), a in sorted(table.opaque_imports.items())]
    if opaque:
        opaque.insert(0, "\n# opaque modules: torchgraft could not see into these, so they are imported\n")
    parts = head + imports + helper_imports + opaque
    consts = [h.source for h in model.helpers if h.name.startswith("const:")]
    if consts:
        parts += ["\n"] + consts
    for h in model.helpers:
        if not h.name.startswith(("import:", "const:")):
            parts += ["\n\n", h.source]
    for block in runtime + table.defs:
        parts += ["\n\n", block]
    parts += ["\n\n", f"def build() -> {root_name}:\n", '    """The model, freshly initialised."""\n']
    if model.constants:
        parts += [f"    model = {root_expr}\n", "    _load_constants(model)\n", "    return model\n"]
    else:
        parts.append(f"    return {root_expr}\n")
    parts += [
              "\n\n",
              f'def load(weights: str | Path = Path(__file__).with_name("{WEIGHTS}")) -> {root_name}:\n',
              '    """The model with the weights beside this file loaded (strict=True)."""\n',
              "    from safetensors.torch import load_file\n\n",
              "    model = build()\n",
              "    model.load_state_dict(load_file(str(weights)), strict=True)\n",
              "    return model\n"]
    if model.constants:
        parts += ["\n\n", LOAD_CONSTANTS]
    text = "".join(parts)
    return re.sub(r"\n{4,}", "\n\n\n", text)


LOAD_CONSTANTS = f'''def _load_constants(model: nn.Module) -> None:
    """Fill tensors that are not in the state_dict (non-persistent buffers, traced constants)."""
    from safetensors.torch import load_file

    with torch.no_grad():
        for key, value in load_file(str(Path(__file__).with_name("{CONSTANTS}"))).items():
            model.get_buffer(key).copy_(value)
'''


def _safe_doc(text: str) -> str:
    return re.sub(r"[^\w.<>-]", "_", text)

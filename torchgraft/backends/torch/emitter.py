"""``emit(model)``: the whole ``model.py`` plus weights, and loading it back."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import re
import sys
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.backends.torch.act_layers import layer_activations
from torchgraft.backends.torch.classes import ClassTable
from torchgraft.backends.torch.combinators import RUNTIME_CLASSES
from torchgraft.backends.torch.const_values import written_constants
from torchgraft.backends.torch.extra_state import load_lines as extra_state_load
from torchgraft.backends.torch.extra_state import metadata as extra_metadata
from torchgraft.backends.torch.formatting import formatted as format_source
from torchgraft.backends.torch.helper_order import in_definition_order
from torchgraft.backends.torch.modules import WIDTH, accessor, lit_code, module_expr, with_head
from torchgraft.backends.torch.trim_calls import trim_calls
from torchgraft.errors import EmitError, IRError
from torchgraft.ir.codecheck import code_problems
from torchgraft.ir.combine import CombineKind
from torchgraft.ir.dtypes import build_dtype
from torchgraft.ir.model import HelperKind, Model
from torchgraft.ir.nodes import Block, Node, Opaque, Parallel, SkipConnection
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join, walk

WEIGHTS = "weights.safetensors"
CONSTANTS = "constants.safetensors"


@dataclass
class EmittedCode:
    """Emitted source and the weights it loads. ``save(dir)`` writes both; ``materialize()`` builds it."""

    source: str
    weights: Mapping[str, torch.Tensor] = field(repr=False)
    class_name: str = "Model"
    constants: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)
    extra_state: Mapping[str, Any] = field(default_factory=dict, repr=False)  # JSON values, in the weights' metadata

    @property
    def on_meta(self) -> bool:
        """True when the weights live on the meta device (a model captured without memory)."""
        return any(t.device.type == "meta" for t in (*self.weights.values(), *self.constants.values()))

    def save(self, directory: str | Path) -> Path:
        """Write ``model.py`` and ``weights.safetensors`` into ``directory``; returns the model.py path.

        Meta-device weights have no values: only ``model.py`` is written, with a warning.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.py").write_text(self.source)
        if self.on_meta:
            warnings.warn(f"the model's weights are on the meta device: wrote {out / 'model.py'} and no weights; "
                          "load a checkpoint into build() yourself", stacklevel=2)
            return out / "model.py"
        if self.weights or self.extra_state:
            save_file(_unshared(self.weights), str(out / WEIGHTS), metadata=extra_metadata(self.extra_state))
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
            if str(device) == "meta" and hasattr(module, "_load_constants"):
                module._load_constants = lambda model: None  # meta tensors hold no values to fill
            with torch.device(device) if device is not None else contextlib.nullcontext():
                if load_weights and (self.weights or self.extra_state):
                    return module.load(Path(tmp) / WEIGHTS)  # type: ignore[no-any-return]
                if self.constants and str(device) != "meta":
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
    seen: set[tuple[int, object]] = set()
    out = {}
    for k, v in weights.items():
        t = v.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        out[k] = t.contiguous().clone() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    return out


def _tie_lines(model: Model, base: str = "self") -> list[str]:
    reach = accessor(model.root, base)
    return [f"{reach(alias)} = {reach(target)}" for alias, target in model.ties]


def emit(model: Model, *, formatted: bool = True) -> EmittedCode:
    """Write ``model`` as a standalone ``model.py`` (torch + safetensors only).

    With no pass applied, the emitted model's state_dict keys are exactly the
    original's and its outputs match. ``build()`` (so ``load()`` too) sets
    ``requires_grad=False`` on exactly the parameters ``frozen_keys`` lists.
    The source is as ``ruff format --isolated`` writes it (formatting.py);
    ``formatted=False`` skips that step, for internal builds no one reads.

    >>> emit(model).save("out/")  # doctest: +SKIP
    PosixPath('out/model.py')
    """
    unsafe = list(code_problems(model))  # names and calls that would become code (a crafted JSON file)
    if unsafe:
        raise EmitError("refusing to emit: " + "; ".join(unsafe[:5]) + (f" (and {len(unsafe) - 5} more)"
                        if len(unsafe) > 5 else "") + ". Fix the IR (verify(model) lists every problem)")
    model = trim_calls(model)  # children take only the arguments they use (trim_calls.py)
    model, written = written_constants(model)  # zeros, ones, ranges: built as such, not saved (const_values.py)
    model = layer_activations(model)  # ``return F.silu(input)`` wrappers: nn.SiLU(), no class (act_layers.py)
    table = ClassTable(helpers=model.helpers, written=written)
    for h in model.helpers:
        name = h.name.split(".")[0]  # an import of ``a.b`` binds ``a``
        table.names.reserve(name)
        table.reserved.add(name)
    for name in (*RUNTIME_CLASSES, FROZEN, "Callable"):
        table.names.reserve(name)
    table.imports |= _combine_modules(model.root)
    if isinstance(model.root, Block):
        table.extra_init[id(model.root)] = _tie_lines(model)
        root_expr = table.class_of(model.root, "")
        root_name = root_expr[:-2]
    else:
        table.prepare(model.root)
        root_expr = module_expr(model.root, table.class_of, "", 4)
        root_name = "nn.Module"
    runtime = [src for name, src in RUNTIME_CLASSES.items()
               if any(isinstance(n, SkipConnection if name == "SkipConnection" else Parallel)
                      for _, n in walk(model.root))]
    source = _assemble(model, table, runtime, root_expr, root_name)
    if formatted:
        source = format_source(source)
    return EmittedCode(source, dict(model.weights), root_name, dict(model.constants), dict(model.extra_state))


def _combine_modules(root: Node) -> set[str]:
    """Modules that module-level ``call`` combines name in constructor calls (``operator`` for
    ``combine=operator.pow``); ``torch``/``F`` are imported when used, builtins need nothing."""
    return {n.combine.fn.split(".")[0] for _, n in walk(root)
            if isinstance(n, (Parallel, SkipConnection)) and n.combine.kind is CombineKind.CALL
            and n.combine.fn.split(".")[0] not in ("torch", "builtins")}


def _names_used(body: str) -> set[str] | None:
    """Every name the body reads (None if it does not parse: then imports are found by regex)."""
    try:
        return {n.id for n in ast.walk(ast.parse(body)) if isinstance(n, ast.Name)}
    except (SyntaxError, ValueError, RecursionError):
        return None


def _uses(name: str, body: str, used: set[str] | None) -> bool:
    return name in used if used is not None else re.search(rf"\b{name}\b", body) is not None


def _imports(model: Model, table: ClassTable, body: str) -> str:
    """The import block: only what the body uses (names in docstrings or comments do not count)."""
    used = _names_used(body)
    std = ["from pathlib import Path\n"]
    if _uses("json", body, used):
        std.append("import json\n")
    if _uses("OrderedDict", body, used):
        std.append("from collections import OrderedDict\n")
    if _uses("Callable", body, used):
        std.append("from collections.abc import Callable\n")
    std += [f"import {m}\n" for m in sorted(table.imports - {"torch"})]
    std += sorted({h.source for h in model.helpers if h.kind is HelperKind.IMPORT})
    torch_lines = ["import torch\n"] if _uses("torch", body, used) else []
    if _uses("F", body, used):
        torch_lines.append("import torch.nn.functional as F\n")
    names = [n for n in ("Tensor", "nn") if _uses(n, body, used)]
    if names:
        torch_lines.append(f"from torch import {', '.join(names)}\n")
    opaque = [f"from {m} import {q.split('.')[0]}{'' if a == q.split('.')[0] else ' as ' + a}\n"
              for (m, q), a in sorted(table.opaque_imports.items())]
    if opaque:
        opaque.insert(0, "\n# opaque modules: torchgraft could not see into these, so they are imported\n")
    std = sorted(set(std), key=lambda line: (line.startswith("from "), line.lower()))  # isort order
    return "".join(std) + "\n" + "".join(torch_lines) + "".join(opaque)


FROZEN = "FROZEN"
"""The emitted module-level tuple of parameter keys ``build()`` sets ``requires_grad=False`` on."""


def parameter_keys(root: Node) -> set[str]:
    """The state_dict keys of every parameter the IR tree holds (buffers left out)."""
    out: set[str] = set()
    for path, node in walk(root):
        if isinstance(node, Primitive):
            out |= {join(path, name) for name, _, is_param in node.state() if is_param}
        elif isinstance(node, (Block, Opaque)):
            out |= {join(path, s.name) for s in node.state if s.parameter}
    return out


def frozen_keys(model: Model) -> list[str]:
    """The parameters ``build()`` freezes: ``model.frozen`` and Block parameters whose StateSpec says
    ``requires_grad=False``, less keys that name no parameter of the IR (a pass made it a buffer)."""
    own = [join(p, s.name) for p, n in walk(model.root) if isinstance(n, Block)
           for s in n.state if s.parameter and not s.requires_grad]
    if not model.frozen and not own:
        return []
    params = parameter_keys(model.root)
    return [k for k in dict.fromkeys((*model.frozen, *own)) if k in params]


def _frozen_section(keys: list[str]) -> str:
    """``FROZEN = (...)`` on one line when it fits, else one key per line."""
    items = [lit_code(k) for k in keys]
    one = f"{FROZEN} = ({', '.join(items)}{',' if len(items) == 1 else ''})"
    tuple_text = one if len(one) <= WIDTH else f"{FROZEN} = (\n" + "".join(f"    {i},\n" for i in items) + ")"
    return "# parameters with requires_grad=False in the original model: build() freezes them\n" + tuple_text


def _build_function(model: Model, root_expr: str, root_name: str, frozen: list[str]) -> list[str]:
    build = [f"def build() -> {root_name}:\n", '    """The model, freshly initialised."""\n']
    ties = [] if isinstance(model.root, Block) else _tie_lines(model, "model")  # a Block root ties in __init__
    if not model.constants and not frozen and not ties:
        return build + [f"    {with_head(root_expr, 'return ')}\n"]
    build.append(f"    {with_head(root_expr, 'model = ')}\n")
    build += [f"    {line}\n" for line in ties]
    if model.constants:
        build.append("    _load_constants(model)\n")
    if frozen:
        build += [f"    for key in {FROZEN}:\n", "        model.get_parameter(key).requires_grad_(False)\n"]
    return build + ["    return model\n"]


def _entry_points(model: Model, root_expr: str, root_name: str) -> str:
    try:
        dtype = build_dtype(model)
    except IRError as e:
        raise EmitError(str(e)) from None
    root_expr = (root_expr if dtype is None else f"{root_expr}.to({dtype})").replace("\n", "\n    ")
    frozen = frozen_keys(model)
    head = _frozen_section(frozen) + "\n\n\n" if frozen else ""
    build = [head, *_build_function(model, root_expr, root_name, frozen)]
    load = [f"def load(weights: str | Path | None = None) -> {root_name}:\n",
            '    """The model with weights loaded strict=True (default: the file beside this one)."""\n',
            "    from safetensors.torch import load_file\n\n",
            "    model = build()\n",
            f'    weights = weights or Path(__file__).with_name("{WEIGHTS}")\n',
            "    model.load_state_dict(load_file(weights), strict=True)\n",
            "    return model\n"]
    if model.extra_state:
        load = extra_state_load(root_name, WEIGHTS)
    extra = ["\n\n" + LOAD_CONSTANTS] if model.constants else []
    return "".join(build) + "\n\n" + "".join(load) + "".join(extra)


def _assemble(model: Model, table: ClassTable, runtime: list[str], root_expr: str, root_name: str) -> str:
    origin = str(model.root.cls) if isinstance(model.root, Block) else model.name
    head = f'"""Emitted by torchgraft from {_safe_doc(origin)}. Needs only torch and safetensors."""\n\n'
    sections = [h.source for h in model.helpers if h.kind is HelperKind.CONSTANT]
    sections = (["".join(sections)] if sections else [])
    sections += [h.source + table.fx_wrap(h.name) for h in in_definition_order(list(model.helpers))
                 if h.kind is HelperKind.FUNCTION]
    sections += runtime + table.defs + [_entry_points(model, root_expr, root_name)]
    body = "\n\n".join(sections)
    return re.sub(r"\n{4,}", "\n\n\n", head + _imports(model, table, body) + "\n\n" + body)


LOAD_CONSTANTS = f'''def _load_constants(model: nn.Module) -> None:
    """Fill tensors that are not in the state_dict (non-persistent buffers, traced constants)."""
    from safetensors.torch import load_file

    constants = load_file(str(Path(__file__).with_name("{CONSTANTS}")))
    with torch.no_grad():
        for key, value in constants.items():
            model.get_buffer(key).copy_(value)
'''


def _safe_doc(text: str) -> str:
    return re.sub(r"[^\w.<>-]", "_", text)

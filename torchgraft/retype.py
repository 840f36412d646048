"""Re-infer every type of a Model after a rewrite, without real weights (used by passes.run).

The model is emitted, built on the meta device (no memory) and the IR is replayed on it
with meta inputs shaped like ``model.inputs``: module output types and every graph op's
type come back, as at capture. A rewrite that breaks a shape fails here with the path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from torchgraft.errors import CaptureError, IRError
from torchgraft.frontends.interpret import typed_block
from torchgraft.frontends.meta_replay import MetaReplay
from torchgraft.ir.graph import InputKind
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block
from torchgraft.ir.traverse import map_tree
from torchgraft.ir.types import TensorType, type_of

BATCH = 3
"""The size given to symbolic dims in the replay; dim 0 of that size reads back as the symbol."""


def _meta_inputs(model: Model) -> tuple[tuple[Any, ...], dict[str, Any], dict[int, str]] | None:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    symbols: dict[int, str] = {}
    for inp in model.inputs:
        if not isinstance(inp.type, TensorType):
            if inp.default is None:
                return None
            continue
        shape = [BATCH if isinstance(d, str) else d for d in inp.type.shape]
        if inp.type.shape and isinstance(inp.type.shape[0], str):
            symbols[BATCH] = inp.type.shape[0]
        t = torch.empty(shape, dtype=getattr(torch, inp.type.dtype), device="meta")
        if inp.kind is InputKind.KEYWORD:
            kwargs[inp.name] = t
        else:
            args.append(t)
    return tuple(args), kwargs, symbols


def retype(model: Model) -> Model:
    """``model`` with module and op types re-inferred; IRError naming the path if it no longer runs."""
    from torchgraft.backends.torch.emitter import emit, import_file
    from torchgraft.backends.torch.trim_calls import trim_calls

    prepared = _meta_inputs(model)
    if prepared is None or not model.inputs:
        return model
    args, kwargs, symbols = prepared
    code = emit(model)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.py"
        path.write_text(code.source)
        module = import_file(path)
        with torch.device("meta"):
            built = _build(module)
    helpers = {h.name: getattr(module, h.name) for h in model.helpers if hasattr(module, h.name)}
    device = next((i.type.device for i in model.inputs if isinstance(i.type, TensorType)), "cpu")
    interp = MetaReplay(helpers, symbols, device=device)  # shape rules for the common ops: no meta kernels
    try:
        with torch.no_grad():
            out = interp.run_node(trim_calls(model).root, built.eval(), "", args, kwargs)  # as emitted
    except CaptureError as e:
        raise IRError(f"the rewritten model no longer runs: {e}") from e
    root = map_tree(model.root, lambda p, n: typed_block(n, interp.types, p) if isinstance(n, Block) else n)
    return replace(model, root=root, output_type=type_of(out, symbols, device),
                   types=tuple(sorted(interp.module_types.items())))


def _build(module: Any) -> torch.nn.Module:
    """Build without loading constants (they live in a file next to a saved model.py)."""
    loader = getattr(module, "_load_constants", None)
    if loader is not None:
        module._load_constants = lambda model: None
    return module.build()  # type: ignore[no-any-return]

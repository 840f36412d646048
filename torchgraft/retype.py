"""Re-infer every type of a Model after a rewrite, without real weights (used by passes.run).

The model's modules are built once on the meta device (no memory) straight from the IR
(``retype_build``), and the IR runs itself on them (``retype_replay``): captured, hand-built and
transformers models alike. Only where the replay would have to run code copied from the model (a
``PySource`` forward, a copied helper function, an ``Opaque`` module's class) is the emitted
``model.py`` built instead, and ``notes`` says so; a model it cannot call at all is warned about
(``RetypeWarning``) and noted, never skipped silently.

The IR is replayed with meta inputs shaped like ``model.inputs``, at trial sizes for the symbolic dims
(``retype_dims``): two runs for one symbol (``N``), k + 2 for k symbols (``N``, ``T``). Each
value's types across the runs merge into one symbolic type (``f32[N, T, 32]``, ``f32[N*T, 32]``),
for module outputs, every graph op and the model's output; a dim equal in every run stays a
number, so a real size is never read as a symbol. A rewrite that breaks a shape fails here
with the path.

Repeated blocks cost one replay: equal nodes share one module (``build_from_ir(share=True)``) and a block
called again on inputs of the same shapes, strides and dtypes takes the first replay's types (``MEMO``;
``retype_replay.IRReplay``). A block whose input changed (the one after a rewritten block) is replayed, so a
changed type reaches every consumer, and a broken one fails at its path as before.

>>> retype(model).output_type  # doctest: +SKIP
TensorType(shape=('N', 'T', 32), dtype='float32', device='cpu')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from torchgraft.errors import CaptureError, IRError
from torchgraft.frontends.meta_replay import MetaReplay
from torchgraft.ir.interpret import typed_block
from torchgraft.ir.model import HelperKind, Model
from torchgraft.ir.nodes import Block, Chain, Container, Node, module_children
from torchgraft.ir.traverse import map_tree
from torchgraft.ir.types import TensorType, ValueType, type_of
from torchgraft.retype_build import IRBlock, NotFromIR, build_from_ir
from torchgraft.retype_dims import Run, example_inputs, merge_runs, trial_plan
from torchgraft.retype_replay import IRReplay

MEMO = True
"""Replay each distinct block once per input signature (``build_from_ir(share=True)`` and ``IRReplay``'s memo),
for models without ties or forward hooks; False replays every block (the same types, slower: tests compare)."""


class RetypeWarning(UserWarning):
    """``retype`` could not call the model on meta inputs: its types were kept as they were, not re-inferred."""


def retype(model: Model, notes: list[str] | None = None) -> Model:
    """``model`` with module and op types re-inferred; IRError naming the path if it no longer runs.

    A model it cannot call on meta inputs (no inputs, a non-tensor input without a default, an input
    dim written as an expression) comes back unchanged, with a ``RetypeWarning``. ``notes`` (when given)
    gets one line for that, and one when the replay had to build the emitted ``model.py`` (and why).
    """
    plan = trial_plan([i.type for i in model.inputs])
    examples = [example_inputs(model, sizes) for sizes in plan.runs] if plan is not None else []
    if plan is None or not model.inputs or any(e is None for e in examples):
        _untyped(model, notes)
        return model
    built, helpers, note, whole, shared = _prepared(model)
    if note is not None and notes is not None:
        notes.append(note)
    device = next((i.type.device for i in model.inputs if isinstance(i.type, TensorType)), "cpu")
    root = model.root if note is None else _trimmed(model)  # the emitted classes take trimmed calls
    hooked = _Hooked(whole, device)
    runs = []
    try:
        for i, example in enumerate(examples):
            assert example is not None
            at = f" (trial sizes {plan.sizes(i)})" if plan.symbols else ""
            runs.append(hooked.fill(_replay(root, built, helpers, device, example, at, note is None, shared)))
    finally:
        hooked.remove()
    merged = merge_runs(plan, runs, device)
    typed = map_tree(model.root, lambda p, n: typed_block(n, merged.ops, p) if isinstance(n, Block) else n)
    return replace(model, root=typed, output_type=merged.output, types=tuple(sorted(merged.modules.items())))


def _prepared(model: Model) -> tuple[torch.nn.Module, dict[str, Any], str | None,
                                    list[tuple[str, torch.nn.Module]], bool]:
    """``_built``'s (modules, helpers, note), the modules the replay calls whole (hooked for their types), and
    whether equal nodes share their module (``MEMO``; never with ties, hooks or the emitted build)."""
    shared = MEMO and not model.ties  # equal blocks share a module: one replay per input type (IRReplay)
    built, helpers, note = _built(model, share=shared)
    wanted = {p for p, _ in model.types}
    whole = [(p, m) for p, m in _called_whole(model.root, built) if p in wanted]
    if shared and note is None and whole:  # a hook per path needs a module per path
        built, helpers, note = _built(model, share=False)
        whole = [(p, m) for p, m in _called_whole(model.root, built) if p in wanted]
        shared = False
    return built, helpers, note, whole, shared and note is None


def _untyped(model: Model, notes: list[str] | None) -> None:
    """Say that ``model``'s types were kept, and why (a warning, and a note when notes are kept)."""
    if not model.inputs:
        why = "it has no inputs"
    elif trial_plan([i.type for i in model.inputs]) is None:
        why = "an input dim is not a number or a symbol, so it gets no trial sizes"
    else:
        names = [i.name for i in model.inputs if not isinstance(i.type, TensorType)]
        why = f"a non-tensor input ({', '.join(names)}) has no default to call it with"
    text = f"types not re-inferred: retype cannot call the model on meta inputs ({why})"
    warnings.warn(text, RetypeWarning, stacklevel=3)
    if notes is not None:
        notes.append(text)


def _replay(root: Node, built: torch.nn.Module, helpers: dict[str, Any], device: str,
            example: tuple[tuple[Any, ...], dict[str, Any]], at: str, from_ir: bool, memo: bool = False) -> Run:
    """One replay at one set of trial sizes: concrete types (no symbols), merged later. ``memo``: ``built`` shares
    one module between equal nodes, and each is replayed once per input signature (``IRReplay``)."""
    # shape rules for the common ops: no meta kernels
    interp = IRReplay(helpers, {}, device=device, memo=memo) if from_ir else MetaReplay(helpers, {}, device=device)
    try:
        with torch.no_grad():
            out = interp.run_node(root, built, "", *example)
    except CaptureError as e:
        raise IRError(f"the rewritten model no longer runs{at}: {e}") from e
    return Run(type_of(out, None, device), interp.module_types, interp.types)


class _Hooked:
    """Output types of modules the replay calls as a whole (a Parallel's branches, children of an
    opaque block), for the paths the model had types for: the interpreter records only the
    modules it steps into, and these would otherwise lose their types."""

    def __init__(self, modules: list[tuple[str, torch.nn.Module]], device: str) -> None:
        self.seen: dict[str, ValueType] = {}
        self.handles = [m.register_forward_hook(self._hook(p, device)) for p, m in modules]

    def _hook(self, path: str, device: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        def post(module: torch.nn.Module, args: Any, out: Any) -> None:
            self.seen.setdefault(path, type_of(out, None, device))
        return post

    def fill(self, run: Run) -> Run:
        """``run`` with the hooked types of the paths it has none for (and a fresh record for the next run)."""
        seen, self.seen = self.seen, {}
        return replace(run, modules=seen | run.modules) if seen.keys() - run.modules.keys() else run

    def remove(self) -> None:
        """Take the hooks off the built model."""
        for h in self.handles:
            h.remove()


def _stepped_into(node: Node, mod: torch.nn.Module) -> bool:
    """Whether the replay runs ``node``'s own body (so it calls each child itself) when it reaches it."""
    if isinstance(mod, IRBlock):  # built from the IR: the replay interprets it (IRReplay)
        return True
    if isinstance(node, Block):
        return node.method in ("fx", "trace")
    return isinstance(node, Container) or (isinstance(node, Chain) and type(mod).forward is nn.Sequential.forward)


def _called_whole(node: Node, mod: torch.nn.Module, path: str = "") -> Iterator[tuple[str, torch.nn.Module]]:
    """Modules below ``node`` that their parent's own forward calls (the replay does not reach them),
    with their paths: hooks on these record types and never slow the shape rules of the others."""
    inside = _stepped_into(node, mod)
    for name, child in module_children(node):
        sub = mod._modules.get(name)
        if sub is None:
            continue
        at = f"{path}.{name}" if path else name
        if not inside:
            yield at, sub
        yield from _called_whole(child, sub, at) if inside else _all_below(child, sub, at)


def _all_below(node: Node, mod: torch.nn.Module, path: str) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, child in module_children(node):
        sub = mod._modules.get(name)
        if sub is not None:
            at = f"{path}.{name}"
            yield at, sub
            yield from _all_below(child, sub, at)


def _built(model: Model, share: bool = False) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """The model's modules on meta (in eval mode; equal nodes sharing one module when ``share``), its helper
    functions, and None; or, where the replay needs code copied from the model (``retype_build.blocker``),
    the emitted ``model.py`` built, its helpers, and a note saying so and why."""
    try:
        return (build_from_ir(model, share=True) if share else build_from_ir(model)), {}, None
    except NotFromIR as e:
        built, helpers = _emitted(model)
        return built, helpers, f"types re-inferred by running the emitted model.py: {e.reason}"


def _trimmed(model: Model) -> Node:
    """The root as the emitted ``model.py`` is written: calls without the parameters no child uses."""
    from torchgraft.backends.torch.trim_calls import trim_calls

    return trim_calls(model).root


def _emitted(model: Model) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The emitted model built on meta (in eval mode) and its helper functions."""
    import tempfile
    from pathlib import Path

    from torchgraft.backends.torch.emitter import emit, import_file

    code = emit(model, formatted=False)  # built on meta, never shown: no need to format
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.py"
        path.write_text(code.source)
        module = import_file(path)
        with torch.device("meta"):
            built = _build(module)
    helpers = {h.name: getattr(module, h.name) for h in model.helpers
               if h.kind is HelperKind.FUNCTION and hasattr(module, h.name)}
    return built.eval(), helpers


def _build(module: Any) -> torch.nn.Module:
    """Build without loading constants (they live in a file next to a saved model.py)."""
    loader = getattr(module, "_load_constants", None)
    if loader is not None:
        module._load_constants = lambda model: None
    return module.build()  # type: ignore[no-any-return]

"""Write a ``System`` as ``system.py``: the models' classes and ``class System(nn.Module)``.

The System model is emitted like any model: its ``__init__``, the models' classes, helpers,
imports, ``build()``/``load()`` (which return the System with every parameter that does not
train frozen: ``FROZEN``). Its forward is replaced by one method per loss, ``<model>_loss(batch)``:
the System emitted again with that loss's own graph as its forward (``System.loss_graphs``), whose
``forward`` text is taken and renamed; everything else that emission wrote must equal the whole
system's (checked), and every name the final class reads must be defined (checked). The new
``forward(**batch)`` calls each loss method once; the training methods come from
``template.py``, filled only with checked identifiers, string literals and literals of numbers.
The torch imports are made to match the final text (``import torch`` is always there: the
training methods use it), and the whole file is formatted once.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torchgraft.backends.torch.emitter import EmittedCode, emit
from torchgraft.backends.torch.formatting import formatted as format_source
from torchgraft.errors import EmitError
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block
from torchgraft.system.source import class_def, definitions, method_def, parsed, unbound, with_torch_imports
from torchgraft.system.spec import System
from torchgraft.system.template import forward_text, loss_head, training_text

FILENAME = "system.py"
OWN = frozenset({"System", "build", "load", "_load_constants", "FROZEN"})
"""Module-level names each emission writes for its own root: not compared between emissions."""
HEADER = re.compile(r"\s*def forward\(self, \*\*\w+[^()]*\)(\s*->[^:]*)?:\s*", re.S)
"""The ``def`` line the emitter writes for the System's forward (a loss's graph)."""
FROZEN_NOTE = ("# parameters with requires_grad=False in the original model: build() freezes them",
               "# parameters that do not train (frozen in their model, not selected by trainable, or in a model "
               "without a loss): build() freezes them")


@dataclass
class SystemCode(EmittedCode):
    """Emitted ``system.py`` and its weights: ``save(dir)`` writes both, ``materialize()`` builds the System."""

    def save(self, directory: str | Path) -> Path:
        """Write ``system.py`` and ``weights.safetensors`` (and constants) into ``directory``; returns system.py.

        >>> tg.emit(gan).save("out/")  # doctest: +SKIP
        PosixPath('out/system.py')
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            written = super().save(tmp)
            for f in Path(tmp).iterdir():
                shutil.copyfile(f, out / (FILENAME if f == written else f.name))
        return out / FILENAME


def emit_system(system: System) -> SystemCode:
    """``system.py`` for ``system`` (see the module docstring).

    >>> tg.emit(gan).source.count("class System(nn.Module)")  # doctest: +SKIP
    1
    """
    base = emit(system.model, formatted=False)
    if base.class_name != "System":
        raise EmitError("internal: the emitted system's root class is not called System")
    tree = parsed(base.source, "system")
    shared = definitions(tree, base.source, OWN)
    cls = class_def(tree, "System")
    forward = method_def(cls, "forward")
    methods = [forward_text(system.loss_methods)] + [_loss_method(system, name, shared) for name in system.losses]
    lines = base.source.splitlines(keepends=True)
    end = cls.end_lineno or len(lines)
    lines = (lines[:forward.lineno - 1] + ["\n".join(methods)] + lines[forward.end_lineno or end:end]
             + [_training(system)] + lines[end:])
    source = with_torch_imports("".join(lines).replace(*FROZEN_NOTE))
    final = parsed(source, "system")
    missing = unbound(final, class_def(final, "System"))
    if missing:
        raise EmitError(f"internal: the emitted System reads {missing}, which system.py does not define; please "
                        "report it")
    return SystemCode(format_source(source), base.weights, base.class_name, base.constants, base.extra_state)


def _loss_model(system: System, name: str) -> Model:
    """``system.model`` with loss ``name``'s graph as the root's forward."""
    graph = system.loss_graphs[name]
    root = system.model.root
    assert isinstance(root, Block)
    types = (("", graph.type),) + tuple((p, t) for p, t in system.model.types if p)
    return system.model.with_root(dataclasses.replace(root, body=graph.body, train_body=graph.train_body),
                                  output_type=graph.type, types=types)


def _loss_method(system: System, name: str, shared: dict[str, str]) -> str:
    """The method computing loss ``name``: the System forward emitted for that loss alone, renamed.

    Its body is our emitter's text; the classes and functions it reaches must be those the whole
    system's emission wrote (checked), so it runs against the file's classes unchanged.
    """
    code = emit(_loss_model(system, name), formatted=False)
    tree = parsed(code.source, f"loss {name!r}")
    for key, text in definitions(tree, code.source, OWN).items():
        if shared.get(key) != text:
            raise EmitError(f"internal: emitting loss {name!r} alone wrote {key} differently from the whole "
                            "system; please report it")
    fn = method_def(class_def(tree, "System"), "forward")
    a = fn.args
    if a.args[1:] or a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg is None or not fn.body:
        raise EmitError(f"internal: the forward emitted for loss {name!r} does not take (self, **batch)")
    lines = code.source.splitlines(keepends=True)
    header = "".join(lines[fn.lineno - 1:fn.body[0].lineno - 1])
    if not HEADER.fullmatch(header):
        raise EmitError(f"internal: unexpected forward header emitted for loss {name!r}: {header!r}")
    function = getattr(system.losses[name], "__qualname__", type(system.losses[name]).__name__)
    head = loss_head(system.loss_methods[name], name, a.kwarg.arg, function)
    return head + "".join(lines[fn.body[0].lineno - 1:fn.end_lineno])


def _training(system: System) -> str:
    untrained = tuple(n for n in system.models if n not in system.losses)
    optimizers = {n: spec.code(f"self._trainable(self.{n})") for n, spec in system.specs.items()}
    return training_text(system.weights, system.loss_methods, optimizers, untrained)

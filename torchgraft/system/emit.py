"""Write a ``System`` as ``system.py``: the models' classes and ``class System(nn.Module)``.

The System model is emitted like any model (its ``forward(**batch)`` returns the losses, in
order); the training methods are then added to the end of its class from a fixed template,
filled only with checked identifiers (model names), string literals (``ascii``) and literals
of numbers. ``build()``/``load()`` are the emitted ones: they return the System, with every
parameter that does not train frozen (``FROZEN``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torchgraft.backends.torch.emitter import EmittedCode, emit
from torchgraft.backends.torch.names import str_lit
from torchgraft.errors import EmitError
from torchgraft.system.spec import System

FILENAME = "system.py"
CLASS_LINE = "class System(nn.Module):\n"
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
    code = emit(system.model)
    if code.class_name != "System" or code.source.count(CLASS_LINE) != 1:
        raise EmitError("internal: the emitted system has no single `class System(nn.Module)` (a model class may be "
                        "called System: rename it)")
    start = code.source.index(CLASS_LINE)
    end = _class_end(code.source, start)
    source = code.source[:end] + methods(system) + code.source[end:]
    source = source.replace(*FROZEN_NOTE)
    return SystemCode(source, code.weights, code.class_name, code.constants, code.extra_state)


def _class_end(source: str, start: int) -> int:
    """Where the class starting at ``start`` ends: after its last indented line."""
    pos = start + len(CLASS_LINE)
    end = pos
    for line in source[pos:].splitlines(keepends=True):
        if line.strip() and not line.startswith((" ", "\t")):
            break
        pos += len(line)
        if line.strip():
            end = pos
    return end


def methods(system: System) -> str:
    """The training methods of ``class System``, indented to sit in its body.

    >>> "def training_step(self" in methods(gan)  # doctest: +SKIP
    True
    """
    names = tuple(system.losses)
    tuple_text = "(" + ", ".join(str_lit(n) for n in names) + ("," if len(names) == 1 else "") + ")"
    terms = [f"losses[{str_lit(n)}]" if w == 1.0 else f"{float.__repr__(w)} * losses[{str_lit(n)}]"
             for n, w in system.weights.items()]
    weights = "{" + ", ".join(f"{str_lit(n)}: {float.__repr__(w)}" for n, w in system.weights.items()) + "}"
    optims = "".join(f"            {str_lit(n)}: {spec.code(f'self._trainable(self.{n})')},\n"
                     for n, spec in system.specs.items())
    return TEMPLATE.format(names=tuple_text, order=", ".join(names), total=" + ".join(terms), weights=weights,
                           optimizers=optims)


TEMPLATE = '''
    # training: added by torchgraft.system (forward(**batch) above returns the losses, in this order)
    optimizers: dict[str, torch.optim.Optimizer] | None = None

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each trained model's loss on ``batch`` (a dict of tensors), by model name."""
        return dict(zip({names}, self(**batch)))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The system's loss: the models' losses, weighted, summed."""
        losses = self.losses(batch)
        return {total}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per trained model, over its parameters that train (requires_grad)."""
        return {{
{optimizers}        }}

    def _trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One optimisation step for each trained model in turn ({order}): its loss on ``batch`` is computed
        afresh (after the steps before it), all gradients are zeroed, its weighted loss is backpropagated
        and its optimizer steps. Returns each model's loss before its step, detached. The optimizers are
        made by ``configure_optimizers()`` on first use (or by ``setup``); ``step`` is the step number,
        for schedules you add."""
        if self.optimizers is None:
            self.optimizers = self.configure_optimizers()
        weights = {weights}
        out = {{}}
        for name, optimizer in self.optimizers.items():
            self.zero_grad(set_to_none=True)
            loss = self.losses(batch)[name]
            (weights[name] * loss).backward()
            optimizer.step()
            out[name] = loss.detach()
        return out

    def setup(self, data: dict[str, torch.Tensor] | None = None) -> "System":
        """Ready the system to train: on the device of ``data`` (a batch) when given, in train mode,
        with fresh optimizers. Returns ``self``."""
        if data is not None:
            self.to(next(iter(data.values())).device)
        self.train()
        self.optimizers = self.configure_optimizers()
        return self
'''

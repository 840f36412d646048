"""The text ``class System`` gets from torchgraft.system: forward, the training methods, and their names.

Only checked identifiers (model names, method names), string literals (``str_lit``), literals
of numbers and ``safe_doc`` text fill these templates; nothing of a model or a loss function
becomes code.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from torchgraft.backends.torch.names import Namespace, safe_doc, str_lit
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block

METHODS = frozenset({"forward", "losses", "loss", "configure_optimizers", "training_step", "setup", "optimizers",
                     "train"})
"""Names the emitted ``System`` class defines; no model may be called one of them."""


def loss_method_names(model: Model, losses: tuple[str, ...]) -> dict[str, str]:
    """The method computing each loss: ``<model>_loss``, unique against the class's other members
    (models, its own constants, the methods above, ``nn.Module``'s attributes) and each other.

    >>> loss_method_names(gan.model, ("generator", "discriminator"))  # doctest: +SKIP
    {'generator': 'generator_loss', 'discriminator': 'discriminator_loss'}
    """
    taken = set(METHODS) | {n for n in dir(nn.Module)} | {"_trainable"}
    if isinstance(model.root, Block):
        taken |= {n for n, _ in model.root.children} | {s.name for s in model.root.state}
        taken |= {n for n, _ in model.root.constants}
    names = Namespace(taken)
    return {name: names.name(f"{name}_loss") for name in losses}


def _one_tuple(items: list[str]) -> str:
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def forward_text(methods: Mapping[str, str]) -> str:
    """``forward(**batch)``: every loss method, once each, in order."""
    calls = _one_tuple([f"self.{m}(batch)" for m in methods.values()])
    return (f"    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, ...]:\n"
            f'        """Each trained model\'s loss on ``batch`` (tensors given as keywords), in order:\n'
            f'        {", ".join(methods)}."""\n'
            f"        return {calls}\n")


def loss_head(method: str, model: str, batch: str, function: str) -> str:
    """The ``def`` line and docstring of the method computing ``model``'s loss (its body: the captured graph)."""
    return (f"    def {method}(self, {batch}: dict[str, torch.Tensor]) -> torch.Tensor:\n"
            f'        """Model {model}\'s loss: {safe_doc(function)}, as captured (guards included)."""\n')


def training_text(system_losses: Mapping[str, float], methods: Mapping[str, str], optimizers: Mapping[str, str],
                  untrained: tuple[str, ...]) -> str:
    """The training members: ``optimizers``, ``losses``, ``loss``, ``configure_optimizers``, ``training_step``,
    ``setup`` and, when some model has no loss, ``train`` (which keeps those models in eval mode).

    ``system_losses`` maps each trained model to its loss weight, ``optimizers`` to its optimizer's
    constructor call (code made by ``OptimizerSpec.code``).
    """
    names = list(system_losses)
    losses = "".join(f"            {str_lit(n)}: self.{methods[n]}(batch),\n" for n in names)
    terms = [f"losses[{str_lit(n)}]" if w == 1.0 else f"{float.__repr__(w)} * losses[{str_lit(n)}]"
             for n, w in system_losses.items()]
    steps = "".join(f"            ({str_lit(n)}, self.{methods[n]}, {float.__repr__(w)}),\n"
                    for n, w in system_losses.items())
    optims = "".join(f"            {str_lit(n)}: {code},\n" for n, code in optimizers.items())
    mode = ("the models without a loss, " + ", ".join(untrained) + ", in eval mode: see ``train``" if untrained
            else "every model has a loss")
    text = TRAINING.format(order=", ".join(names), losses=losses, total=" + ".join(terms), steps=steps,
                           optimizers=optims, mode=mode)
    if untrained:
        text += TRAIN.format(names=", ".join(untrained), models=_one_tuple([f"self.{n}" for n in untrained]))
    return text


TRAINING = '''
    # training: added by torchgraft.system
    optimizers: dict[str, torch.optim.Optimizer] | None = None

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each trained model's loss on ``batch`` (a dict of tensors), by model name; each computed once."""
        return {{
{losses}        }}

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
        """One optimisation step for each trained model in turn ({order}), as a hand-written loop:
        all gradients are zeroed, that model's loss alone is computed on ``batch`` (after the steps
        before it), its weighted loss is backpropagated and its optimizer steps. Returns each model's
        loss before its step, detached. On first use it calls ``setup()``; ``step`` is the step
        number, for schedules you add."""
        if self.optimizers is None:
            self.setup()
        out = {{}}
        for name, compute, weight in (
{steps}        ):
            self.zero_grad(set_to_none=True)
            loss = compute(batch)
            (weight * loss).backward()
            self.optimizers[name].step()
            out[name] = loss.detach()
        return out

    def setup(self, data: dict[str, torch.Tensor] | None = None) -> "System":
        """Ready the system to train: on the device of ``data`` (a batch) when given, in train mode
        ({mode}), with fresh optimizers. Returns ``self``."""
        if data is not None:
            self.to(next(iter(data.values())).device)
        self.train()
        self.optimizers = self.configure_optimizers()
        return self
'''

TRAIN = '''
    def train(self, mode: bool = True) -> "System":
        """``nn.Module.train(mode)``, except that the models without a loss ({names}) always stay in
        eval mode: they do not train, so their BatchNorm statistics never change and their dropout is
        off, as after ``teacher.eval()`` in a hand-written loop."""
        super().train(mode)
        for model in {models}:
            model.eval()
        return self
'''

"""Training systems: several models, composable losses, an optimizer per model, emitted as plain torch.

``System(models=..., losses=..., optimizers=..., example_batch=...)`` captures each loss
function like a forward; ``tg.emit(system)`` writes ``system.py`` with ``class System(nn.Module)``
(one ``<model>_loss(batch)`` method per loss, ``forward``, ``losses``, ``loss``,
``configure_optimizers``, ``training_step``, ``setup``, and ``train`` when a model has no loss)
and ``build()``/``load()``, needing only torch and safetensors. ``training_step`` does what the
hand-written loop does: per trained model, zero the gradients, compute only its loss, backward,
step; a model without a loss stays in eval mode. See docs/system.md.

>>> from torchgraft.system import System  # doctest: +SKIP
"""

from torchgraft.system.emit import SystemCode, emit_system
from torchgraft.system.errors import SystemSpecError
from torchgraft.system.options import OptimizerSpec, optimizer_names
from torchgraft.system.spec import System

__all__ = ["OptimizerSpec", "System", "SystemCode", "SystemSpecError", "emit_system", "optimizer_names"]

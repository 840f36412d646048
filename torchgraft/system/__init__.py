"""Training systems: several models, composable losses, an optimizer per model, emitted as plain torch.

``System(models=..., losses=..., optimizers=..., example_batch=...)`` captures the loss
functions like forwards; ``tg.emit(system)`` writes ``system.py`` with ``class System(nn.Module)``
(``forward``, ``losses``, ``loss``, ``configure_optimizers``, ``training_step``, ``setup``)
and ``build()``/``load()``, needing only torch and safetensors. See docs/system.md.

>>> from torchgraft.system import System  # doctest: +SKIP
"""

from torchgraft.system.emit import SystemCode, emit_system
from torchgraft.system.errors import SystemSpecError
from torchgraft.system.options import OptimizerSpec, optimizer_names
from torchgraft.system.spec import System

__all__ = ["OptimizerSpec", "System", "SystemCode", "SystemSpecError", "emit_system", "optimizer_names"]

"""torchgraft: model surgery for PyTorch.

Capture a live ``nn.Module`` into a typed, hierarchical IR, rewrite it, and emit plain
PyTorch source plus weights that load without torchgraft::

    import torchgraft
    ir_model = torchgraft.capture(model, (example_input,))
    code = torchgraft.emit(ir_model)
    code.save("out/")              # out/model.py + out/weights.safetensors
    rebuilt = code.materialize()   # the emitted model, weights loaded
"""

from torchgraft import ir, passes
from torchgraft.backends.torch.emitter import EmittedCode
from torchgraft.backends.torch.emitter import emit as _emit_model
from torchgraft.check import CheckReport, check
from torchgraft.compose import compose
from torchgraft.errors import CaptureError, EmitError, IRError, TorchgraftError
from torchgraft.frontends.capture import capture
from torchgraft.functional import functional
from torchgraft.hand import build
from torchgraft.system import System, emit_system

__version__ = "0.1.0"


def emit(model: ir.Model | System) -> EmittedCode:
    """Write ``model`` as a standalone ``model.py`` plus weights (``backends.torch.emitter.emit``), or a
    training ``System`` as ``system.py`` (``torchgraft.system.emit_system``). Needs only torch and safetensors.

    >>> tg.emit(tg.capture(net, (x,))).save("out/")  # doctest: +SKIP
    """
    if isinstance(model, System):
        return emit_system(model)
    return _emit_model(model)


__all__ = ["CaptureError", "CheckReport", "EmitError", "EmittedCode", "IRError", "TorchgraftError", "build", "capture",
           "check", "compose", "emit", "functional", "ir", "passes"]

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
from torchgraft.backends.torch.emitter import EmittedCode, emit
from torchgraft.check import CheckReport, check
from torchgraft.errors import CaptureError, EmitError, IRError, TorchgraftError
from torchgraft.frontends.capture import capture

__version__ = "0.1.0"

__all__ = ["CaptureError", "CheckReport", "EmitError", "EmittedCode", "IRError", "TorchgraftError", "capture", "check",
           "emit", "ir", "passes"]

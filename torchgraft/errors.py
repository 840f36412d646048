"""Exceptions raised by torchgraft. Every message names where, what, and the fix."""

from __future__ import annotations


class TorchgraftError(Exception):
    """Base class of every error torchgraft raises on purpose."""


class IRError(TorchgraftError, ValueError):
    """An IR node was built with invalid fields, or a model broke an invariant."""


class CaptureError(TorchgraftError):
    """The model could not be captured, e.g. it fails in eager mode on the example inputs.

    ``path`` is the dotted module path where the failure happened ("" is the root).
    The original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class EmitError(TorchgraftError):
    """The IR cannot be written as PyTorch source (says which node and why)."""


class CheckError(TorchgraftError, ValueError):
    """``check()`` cannot compare the two modules on the inputs given (says why and what to do)."""


class SelectorWarning(UserWarning):
    """A pass's ``where=`` selector picked nothing in the model (a typo, or a class name that is not there).

    ``passes.run(..., strict=True)`` (CLI: ``--strict``) turns it into a ``PipelineError``.
    """

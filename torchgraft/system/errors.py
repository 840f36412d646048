"""The error a training system raises when its definition is wrong."""

from __future__ import annotations

from torchgraft.errors import TorchgraftError


class SystemSpecError(TorchgraftError, ValueError):
    """A ``System`` is defined wrongly: keys that do not match, an unknown optimizer, a loss that is
    not a scalar, a ``trainable`` selector that selects nothing. The message names the fix.

    >>> raise SystemSpecError("optimizers name 'critic', which is not a model")  # doctest: +SKIP
    """

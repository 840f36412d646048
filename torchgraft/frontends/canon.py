"""Canonical forms: every spelling of an activation becomes one ``Activation`` primitive.

``F.relu(x)``, ``F.relu(x, inplace=True)``, ``torch.relu(x)``, ``torch.relu_(x)``,
``x.relu()`` and ``x.relu_()`` all become ``PrimCall(Activation(RELU, ...))`` with the
spelling and in-place flag recorded, so a pass sees every site and the emitter can
write each back the way it was.
"""

from __future__ import annotations

from typing import Any

from torchgraft.ir.activations import Spelling, functional_params
from torchgraft.ir.graph import PrimCall, Target
from torchgraft.ir.opkinds import activation_of
from torchgraft.ir.primitives import Activation
from torchgraft.ir.values import Arg, Const


def canonical_target(target: Target, args: tuple[Arg, ...], kwargs: tuple[tuple[str, Arg], ...]
                     ) -> tuple[Target, tuple[Arg, ...], tuple[tuple[str, Arg], ...]]:
    """Rewrite an activation call into its canonical ``PrimCall``; other calls pass through."""
    found = activation_of(target)
    if found is None or not args:
        return target, args, kwargs
    kind, spelling, inplace = found
    if spelling is Spelling.FUNCTIONAL:
        params = functional_params(kind)
        if len(args) > len(params) or any(k not in params for k, _ in kwargs):
            return target, args, kwargs
        extra = dict(zip(params[1:], args[1:]))
        for k, v in kwargs:
            if k == params[0] or k in extra:
                return target, args, kwargs
            extra[k] = v
    else:
        if len(args) != 1 or kwargs:
            return target, args, kwargs
        extra = {}
    options: dict[str, Any] = {}
    for k, v in extra.items():
        if not isinstance(v, Const):
            return target, args, kwargs
        if k == "inplace":
            inplace = inplace or bool(v.value)
        elif k in kind.options:
            options[k] = v.value
        else:
            return target, args, kwargs
    return PrimCall(Activation.of(kind, inplace=inplace, spelling=spelling, **options)), args[:1], ()

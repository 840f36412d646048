"""Canonical forms: every spelling of an activation becomes one ``Activation`` primitive.

``F.relu(x)``, ``F.relu(x, inplace=True)``, ``torch.relu(x)``, ``torch.relu_(x)``,
``x.relu()`` and ``x.relu_()`` all become ``PrimCall(Activation(RELU, ...))`` with the
spelling and in-place flag recorded, so a pass sees every site and the emitter can
write each back the way it was.
"""

from __future__ import annotations

from typing import Any

from torchgraft.ir.activations import FUNCTIONAL_ACTIVATIONS, ActKind, Spelling, functional_params
from torchgraft.ir.graph import FunctionCall, MethodCall, PrimCall, Target
from torchgraft.ir.primitives import Activation
from torchgraft.ir.values import Arg, Const

_BY_TORCH = {k.torch_fn: k for k in ActKind if k.torch_fn}
_BY_METHOD = {k.method: k for k in ActKind if k.method}


def _lookup(target: Target) -> tuple[ActKind, Spelling, bool] | None:
    if isinstance(target, FunctionCall):
        ns, _, name = target.qualname.rpartition(".")
        inplace = name.endswith("_")
        base = name[:-1] if inplace else name
        if ns == "torch.nn.functional" and base in FUNCTIONAL_ACTIVATIONS:
            return FUNCTIONAL_ACTIVATIONS[base], Spelling.FUNCTIONAL, inplace
        if ns == "torch" and base in _BY_TORCH:
            return _BY_TORCH[base], Spelling.TORCH, inplace
    if isinstance(target, MethodCall):
        inplace = target.name.endswith("_")
        base = target.name[:-1] if inplace else target.name
        if base in _BY_METHOD:
            return _BY_METHOD[base], Spelling.METHOD, inplace
    return None


def canonical_target(target: Target, args: tuple[Arg, ...], kwargs: tuple[tuple[str, Arg], ...]
                     ) -> tuple[Target, tuple[Arg, ...], tuple[tuple[str, Arg], ...]]:
    """Rewrite an activation call into its canonical ``PrimCall``; other calls pass through."""
    found = _lookup(target)
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

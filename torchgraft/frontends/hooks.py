"""Refuse models with forward hooks: the emitted ``model.py`` could not reproduce them.

A forward pre-hook may rewrite a module's inputs and a forward hook its output; neither is
part of the module's ``forward``, so capture would drop them and the emitted model would
compute something else. ``refuse_hooks`` raises a ``CaptureError`` listing every such hook,
on the model, on any submodule, or registered globally with
``torch.nn.modules.module.register_module_forward_(pre_)hook``.

Hooks that do not change forward outputs are left alone: backward hooks, state_dict and
load_state_dict hooks, and registration hooks. No torchvision classifier, detector or
segmenter and no transformers model (BERT, GPT-2, Llama, T5, ViT, Wav2Vec2) registers a
forward hook when it is constructed, so this refuses only hooks a user added.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from torch.nn.modules import module as torch_module

from torchgraft.errors import CaptureError
from torchgraft.frontends.compiled import is_compiled
from torchgraft.frontends.reparam import kept_hook

FIX = ("remove it (handle.remove()) before capture and apply its effect in the model's forward, "
       "or capture without it")
"""What the error tells the user to do."""

_LEGACY_REPARAM = {
    "WeightNorm": "torch.nn.utils.parametrizations.weight_norm",
    "SpectralNorm": "torch.nn.utils.parametrizations.spectral_norm",
}
"""Hook classes of the legacy ``torch.nn.utils.weight_norm``/``spectral_norm`` → their parametrization API."""


def hook_name(fn: Callable[..., Any]) -> str:
    """The hook function's qualified name; for a callable object its repr, or its class when that is the default."""
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):
        name = f"{type(fn).__qualname__} object" if type(fn).__repr__ is object.__repr__ else repr(fn)
    api = _LEGACY_REPARAM.get(type(fn).__name__)
    return f"{name} (legacy reparametrization: use {api} instead)" if api else name


def _listed(hooks: Mapping[int, Callable[..., Any]], kind: str, with_kwargs: Any = (),
            kept: Callable[[Any], bool] = lambda fn: False) -> list[str]:
    """``"<kind> <name>"`` for each hook in a hook dict; ``with_kwargs`` holds the ids registered with kwargs;
    hooks ``kept`` says capture reproduces are left out."""
    return [f"{kind}{' (with_kwargs)' if hook_id in with_kwargs else ''} {hook_name(fn)}"
            for hook_id, fn in hooks.items() if not kept(fn)]


def module_hooks(mod: nn.Module) -> list[str]:
    """The forward pre-hooks and forward hooks registered on ``mod``, as ``"<kind> <function>"``, and a
    ``forward`` set on the instance (as hook libraries do: model.py writes the class's forward); a legacy
    weight/spectral norm on a torch.nn layer is left out (capture registers it again: ``frontends.reparam``)."""
    own = None if is_compiled(mod) else mod.__dict__.get("forward")  # torch.compile's wrapper: capture reads it
    return [*_listed(mod._forward_pre_hooks, "forward pre-hook", mod._forward_pre_hooks_with_kwargs,
                     lambda fn: kept_hook(mod, fn)),
            *_listed(mod._forward_hooks, "forward hook", mod._forward_hooks_with_kwargs),
            *([f"forward set on the instance {own!r} (del module.forward to use the class's)"] if own is not None
              else [])]


def global_hooks() -> list[str]:
    """The forward (pre-)hooks registered for every module, as ``"<kind> <function>"``."""
    return [*_listed(torch_module._global_forward_pre_hooks, "global forward pre-hook"),
            *_listed(torch_module._global_forward_hooks, "global forward hook",
                     getattr(torch_module, "_global_forward_hooks_with_kwargs", ()))]


def refuse_hooks(model: nn.Module) -> None:
    """Raise ``CaptureError`` listing every forward (pre-)hook that would run in ``model``; None if there are none.

    The error's ``path`` is the first offending module ("" for the root or a global hook).
    The model and its hooks are not changed.
    """
    found = [("<every module>", hook) for hook in global_hooks()]
    first: str | None = "" if found else None
    for path, mod in model.named_modules():
        if not (mod._forward_pre_hooks or mod._forward_hooks or "forward" in mod.__dict__):
            continue  # nothing module_hooks would list (the common case, checked without building lists)
        hooks = module_hooks(mod)
        if hooks and first is None:
            first = path
        found += [(path or "<root>", hook) for hook in hooks]
    if found:
        listed = "\n".join(f"  - {where}: {what}" for where, what in found)
        raise CaptureError(f"the model has {len(found)} forward hook{'s' if len(found) > 1 else ''} that the "
                           f"emitted model.py would not run, so its outputs would differ:\n{listed}\n"
                           f"For each: {FIX}.", first or "")

"""What the modules of a model receive: one eager run per example, recorded with hooks.

fx needs to know which optional arguments were None (it specialises ``if arg is None``), and
the fallback trace runs each module on the inputs it actually received. Library code runs
on its export paths here too (``torch.compiler.is_exporting()``), so what is recorded is
what the traces will see.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.frontends.concrete import export_flags
from torchgraft.frontends.examples import Example
from torchgraft.frontends.leaf import torch_layer_name
from torchgraft.frontends.sigcache import signature
from torchgraft.frontends.state import restore_state
from torchgraft.ir.types import ValueType, type_of


def none_args(mod: nn.Module, seen: list[Example]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(none, given): forward parameters that default to None and were None in every recorded call,
    and those that were given in every one (an argument that was both is neither)."""
    if not seen:
        return (), ()
    sig = signature(type(mod).forward)
    try:
        bound = [sig.bind(mod, *a, **kw).arguments for a, kw in seen]
    except TypeError:
        return (), ()
    optional = optional_params(mod)
    return (tuple(n for n in optional if all(b.get(n) is None for b in bound)),
            tuple(n for n in optional if all(b.get(n) is not None for b in bound)))


def optional_params(mod: nn.Module) -> list[str]:
    """Forward parameters that default to None."""
    try:
        params = list(signature(type(mod).forward).parameters.items())[1:]
    except (TypeError, ValueError):
        return []
    return [n for n, p in params if p.default is None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def optional_arg_paths(model: nn.Module) -> list[str]:
    """Modules whose forward has arguments defaulting to None: fx needs to know which were None."""
    out = []
    by_class: dict[type, bool] = {}  # the answer depends on the module's class alone
    for path, mod in model.named_modules():
        cls = type(mod)
        if cls not in by_class:
            by_class[cls] = _has_optional_args(mod)
        if by_class[cls]:
            out.append(path)
    return out


def _has_optional_args(mod: nn.Module) -> bool:
    fwd = type(mod).forward
    if torch_layer_name(mod) is None and fwd not in (nn.Module.forward, nn.Sequential.forward):
        try:
            params = list(signature(fwd).parameters.values())[1:]
        except (TypeError, ValueError):
            return False
        return any(p.default is None for p in params)
    return False


def meta_flags(args: tuple[Any, ...], kwargs: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    """On meta inputs values cannot be read: let library code take its export paths, as torch.export does."""
    on_meta = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in (*args, *kwargs.values()))
    return export_flags() if on_meta else contextlib.nullcontext()


def record_inputs(model: nn.Module, paths: list[str], calls: list[Example], first: dict[str, Example],
                  every: dict[str, list[Example]]) -> None:
    """Record the (args, kwargs) each listed module receives in one eager run per example: the first
    call traces it (``first``), all of them (``every``) decide which optional arguments are always None."""
    handles = []
    for path in paths:
        mod = model.get_submodule(path) if path else model

        def hook(m: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], path: str = path) -> None:
            first.setdefault(path, (a, dict(kw)))
            every.setdefault(path, []).append((a, dict(kw)))

        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        for args, kwargs in calls:
            with torch.no_grad(), restore_state(model), export_flags():  # the paths the traces will take
                eager_types(model, args, kwargs, {})
    finally:
        for h in handles:
            h.remove()


def eager_types(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 symbols: dict[int, str]) -> tuple[Any, dict[str, ValueType]]:
    names = {id(m): p for p, m in model.named_modules()}
    classes = {p: type(m).__name__ for p, m in model.named_modules()}
    stack: list[str] = []
    types: dict[str, ValueType] = {}

    def pre(mod: nn.Module, _args: Any) -> None:
        if id(mod) in names:
            stack.append(names[id(mod)])

    def post(mod: nn.Module, _args: Any, out: Any) -> None:
        if id(mod) in names and stack:
            types.setdefault(stack.pop(), type_of(out, symbols))

    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        out = model(*args, **kwargs)
    except Exception as e:
        where = stack[-1] if stack else ""
        raise CaptureError(f"the model fails in eager mode at {where or '<root>'} "
                           f"({classes.get(where, '?')}): {type(e).__name__}: {e}. "
                           "Check the example inputs: capture runs the model once on them.", where) from e
    finally:
        h1.remove()
        h2.remove()
    return out, types

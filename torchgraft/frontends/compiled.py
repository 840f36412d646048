"""Models wrapped by ``torch.compile``: capture what the wrapper holds, never compile.

``torch.compile(model)`` returns an ``OptimizedModule`` whose only child is the model, as
``_orig_mod``. At the root, capture takes ``_orig_mod`` itself: the emitted ``model.py`` is the
plain model (compile it again if you like), and its state_dict keys are the compiled model's
without the ``_orig_mod.`` prefix. The report says so, and how to load the compiled model's
state_dict: ``emitted.load_state_dict(compiled._orig_mod.state_dict())``, or with the prefix
stripped, ``{k.removeprefix("_orig_mod."): v for k, v in compiled.state_dict().items()}``.

A compiled submodule keeps its keys (``enc._orig_mod.proj.weight``): it becomes a Block with the
child ``_orig_mod`` and a forward that calls it with its own arguments. While such a model is
captured, dynamo is disabled, so any run of it (recording inputs, checking examples) is eager.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.frontends.fx_block import input_kind
from torchgraft.ir.graph import ChildCall, Graph, Input, InputKind, Op
from torchgraft.ir.nodes import Block, ClassRef, Node
from torchgraft.ir.values import Arg, Const, Ref, const_arg

WRAPPED = "_orig_mod"
"""The attribute ``torch.compile``'s wrapper keeps the model under."""


@functools.cache
def _optimized_module() -> type | None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - a torch without dynamo
        return None
    return OptimizedModule  # type: ignore[no-any-return]


def is_compiled(mod: nn.Module) -> bool:
    """Whether ``mod`` is the wrapper ``torch.compile`` returns (an ``OptimizedModule``)."""
    cls = _optimized_module()
    return cls is not None and isinstance(mod, cls)


def uncompiled(model: nn.Module) -> tuple[nn.Module, str]:
    """``model``, or the module ``torch.compile`` wrapped, with the report note saying how keys map ("" for none)."""
    if not is_compiled(model):
        return model, ""
    inner = model._modules[WRAPPED]
    assert inner is not None
    return inner, (f"torch.compile: captured the {type(inner).__name__} it wraps ({WRAPPED}), without compiling; "
                   f"the emitted state_dict keys are the compiled model's without the '{WRAPPED}.' prefix: load "
                   f"with emitted.load_state_dict(compiled.{WRAPPED}.state_dict()), or strip the prefix")


@contextlib.contextmanager
def no_compilation(model: nn.Module) -> Iterator[None]:
    """Within: compiled submodules of ``model`` run eagerly (dynamo disabled), so capture compiles nothing."""
    if not any(is_compiled(m) for m in model.modules()):
        yield
        return
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def _input(p: inspect.Parameter, path: str) -> Input:
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        raise CaptureError(f"{path}: a torch.compile'd submodule whose forward takes *{p.name} cannot be "
                           "captured; capture the model before compiling its parts, or compile the whole model",
                           path)
    default = None
    if p.default is not inspect.Parameter.empty:
        arg = const_arg(p.default)
        if not isinstance(arg, Const):
            raise CaptureError(f"{path}: the default of {p.name!r} in the compiled module's forward is not a "
                               "constant; capture the model before compiling its parts", path)
        default = arg
    return Input(p.name, kind=input_kind(p), default=default)


def compiled_block(mod: nn.Module, path: str, kids: tuple[tuple[str, Node], ...]) -> Block:
    """The Block of a compiled submodule: child ``_orig_mod``, a forward passing its arguments on."""
    inner = mod._modules[WRAPPED]
    assert inner is not None
    params = list(inspect.signature(type(inner).forward).parameters.values())[1:]
    inputs = tuple(_input(p, path or "<root>") for p in params)
    args: tuple[Arg, ...] = tuple(Ref(i.name) for i in inputs if i.kind is InputKind.POSITIONAL)
    kwargs = tuple((i.name, Ref(i.name)) for i in inputs if i.kind is InputKind.KEYWORD)
    name = next(n for n in ("out", "out_", "wrapped_out") if n not in {i.name for i in inputs})
    cls = type(mod)
    return Block(ClassRef(cls.__module__, cls.__qualname__), kids,
                 Graph(inputs, (Op(name, ChildCall(WRAPPED), args, kwargs),), Ref(name)), method="hand")

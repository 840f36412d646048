"""Type a captured model by replaying its IR on meta tensors: no arithmetic, no copies of weights.

Capture must learn every value's type. Running the model for real costs a full forward
(seconds for a large model); this replay costs about what tracing does. Graph ops and
leaf layers run on meta tensors, the common ones through the shape rules of
``ir.shapes`` (faster still than meta kernels). A module the IR does not
interpret (an opaque block, a layer with no rule) runs as a meta twin: a copy of the
module whose parameters and buffers are meta tensors. Anything that needs real values
(``x.item()``, ``if x.sum() > 0``) fails here, and capture then replays for real.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from torchgraft.frontends.meta_cache import MetaCache, layer_key
from torchgraft.frontends.meta_rules import fast_meta
from torchgraft.ir.graph import Op, PrimCall
from torchgraft.ir.interpret import Interpreter
from torchgraft.ir.nodes import Node
from torchgraft.ir.opkinds import FUNCTIONS, Kinded, OpKind, function_in_place
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.shapes import binary_output, cat_output, function_output, primitive_output


def to_meta(tree: Any) -> Any:
    """``tree`` (args, kwargs, nested tuples/lists/dicts) with every tensor as a meta tensor."""
    return tree_map_only(torch.Tensor, lambda t: t if t.device.type == "meta" else t.to("meta"), tree)


def _every_tensor(model: nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers of every module in ``model``'s tree (each module once; a tensor two modules
    share, twice): what ``parameters()`` and ``buffers()`` give, without their named walks."""
    seen: set[int] = set()
    todo, out = [model], list[torch.Tensor]()
    while todo:
        mod = todo.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        out += [t for t in mod._parameters.values() if t is not None]
        out += [t for t in mod._buffers.values() if t is not None]
        todo += [c for c in mod._modules.values() if c is not None]
    return out


def replay_device(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The one device of the model's state and tensor inputs, or None when a meta replay would
    not give the real types: several devices, autocast (it changes dtypes), channels_last
    tensors (CPU kernels keep that layout and meta kernels do not, so a later ``view``
    would fail for real but not on meta)."""
    if torch.is_autocast_enabled("cpu") or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")):
        return None
    tensors = _every_tensor(model)
    tree_map_only(torch.Tensor, tensors.append, (args, kwargs))
    devices = {t.device.type for t in tensors}
    if len(devices) > 1 or not all(t.is_contiguous() for t in tensors):
        return None
    return devices.pop() if devices else "cpu"




def _is_device(v: Any) -> bool:
    if isinstance(v, torch.device):
        return True
    if not isinstance(v, str):
        return False
    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return False
    return True


def _stay_on_meta(a: list[Any], kw: dict[str, Any], to_call: bool, device: str) -> tuple[list[Any], dict[str, Any]]:
    """Arguments with every device (``x.to("cpu")``, ``torch.arange(n, device=...)``) made meta:
    the replay's values all live there, and their types name ``device``. A move to another
    device raises: the types would be wrong, so capture replays for real instead."""
    meta = torch.device("meta")

    def swap(v: Any) -> Any:
        kind = torch.device(v).type
        if kind not in ("meta", device):  # meta: a device read off a replay value (x.device)
            raise RuntimeError(f"a move to {kind} in a model on {device}: the meta replay cannot type it")
        return meta

    a = [swap(v) if isinstance(v, torch.device) or (to_call and _is_device(v)) else v for v in a]
    kw = {k: swap(v) if isinstance(v, torch.device) or (k == "device" and _is_device(v)) else v for k, v in kw.items()}
    return a, kw


def _plain_layer(mod: nn.Module, prim: Primitive) -> bool:
    """Whether the rules may stand for ``mod``: exactly the torch.nn class, and no hooks."""
    hooks = nn.modules.module
    return type(mod) is getattr(nn, prim.op, None) and not (
        mod._forward_hooks or mod._forward_pre_hooks or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks)


def _state(mod: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and buffers of ``mod`` and its children (shared ones more than once)."""
    yield from (t for t in mod._parameters.values() if t is not None)
    yield from (t for t in mod._buffers.values() if t is not None)
    for child in mod._modules.values():
        if child is not None:
            yield from _state(child)


class MetaReplay(Interpreter):
    """An Interpreter whose values are meta tensors; the original modules are only read."""

    def __init__(self, helpers: dict[str, Callable[..., Any]], symbols: dict[int, str],
                 constants: dict[str, torch.Tensor] | None = None, device: str = "cpu") -> None:
        super().__init__(helpers, symbols, constants)
        self.meta_is: str = device  # types read off the meta tensors name the real device
        self._metas: dict[int, torch.Tensor] = {}
        self._twins: dict[int, nn.Module] = {}
        self._cache = MetaCache()  # identical calls in repeated blocks run their meta kernel once

    def attr(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            return value
        if id(value) not in self._metas:
            self._metas[id(value)] = value.to("meta")
        return self._metas[id(value)]

    def call_module(self, node: Node, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if isinstance(node, Primitive) and _plain_layer(mod, node):
            own = (*mod._parameters.values(), *mod._buffers.values())
            state = [t for t in (_state(mod) if mod._modules else own) if t is not None and t.is_floating_point()]
            out = primitive_output(node, args, kwargs, state, mod.training)
            if out is not None:
                return out
            if not mod._modules and not node.reparam:  # a plain layer: its result depends on what layer_key says
                try:
                    what = layer_key(mod, list(_state(mod)))
                except TypeError:
                    return self._twin(mod)(*args, **kwargs)
                return self._cache.call(what, args, kwargs, lambda: self._twin(mod)(*args, **kwargs))
        if isinstance(node, Primitive) and node.reparam:  # weight_norm & co.: rebuilt on meta (no deepcopy)
            if id(mod) not in self._twins:
                self._twins[id(mod)] = node.build(device="meta").train(mod.training)
            return self._twins[id(mod)](*args, **kwargs)
        return self._twin(mod)(*args, **kwargs)

    def call_function(self, qualname: str, a: list[Any], kw: dict[str, Any]) -> Any:
        found = FUNCTIONS.get(qualname)
        out = cat_output(a, kw) if found == Kinded(OpKind.CAT) else function_output(qualname, a, kw)
        if out is not None:
            return out
        def run() -> Any:
            with fast_meta():  # a helper's own torch calls: shape rules where they apply exactly
                return super(MetaReplay, self).call_function(qualname, *_stay_on_meta(a, kw, False, self.meta_is))
        return run() if function_in_place(qualname) else self._cache.call(("f", qualname), a, kw, run)

    def call_method(self, name: str, a: list[Any], kw: dict[str, Any]) -> Any:
        if not isinstance(a[0], torch.Tensor):
            return super().call_method(name, a, kw)
        if name in ("cpu", "cuda"):
            _stay_on_meta([torch.device(name)], {}, False, self.meta_is)  # raises for a move elsewhere
            return a[0]
        out = binary_output(name, a, kw)
        if out is not None:
            return out
        run = lambda: super(MetaReplay, self).call_method(name, *_stay_on_meta(a, kw, name == "to", self.meta_is))  # noqa: E731
        return run() if name.endswith("_") else self._cache.call(("m", name), a, kw, run)

    def call_primitive(self, op: Op, a: list[Any], kw: dict[str, Any]) -> Any:
        assert isinstance(op.target, PrimCall)
        out = primitive_output(op.target.prim, tuple(a), kw, [], False)
        return out if out is not None else super().call_primitive(op, a, kw)

    def _twin(self, mod: nn.Module) -> nn.Module:
        """``mod`` itself when it holds no real tensors, else a copy holding meta ones (made once)."""
        if id(mod) not in self._twins:
            tensors = [t for t in _state(mod) if t.device.type != "meta"]
            memo: dict[int, Any] = {}
            for t in tensors:
                meta = t.to("meta")
                memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
            self._twins[id(mod)] = copy.deepcopy(mod, memo) if tensors else mod
        return self._twins[id(mod)]


__all__ = ["MetaReplay", "replay_device", "to_meta"]

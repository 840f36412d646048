"""``functional(model)``: a model as two pure functions, ``init(seed) -> params`` and ``predict(params, x)``.

Built on the emitted module (``torchgraft.emit(model)``) and ``torch.func.functional_call``::

    init, predict = torchgraft.functional(model)
    params = init(seed=0)                      # {name: tensor}: parameters, then buffers
    y = predict(params, x)                     # eval mode; params are not changed
    weights = {k: params[k] for k in init.trainable}       # differentiate the parameters, not the buffers
    grads = torch.func.grad(lambda w: predict({**params, **w}, x).sum())(weights)

``params`` is a plain dict: train it with ``torch.func.grad`` or with autograd (set
``requires_grad`` on its tensors and hand them to a ``torch.optim`` optimiser).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchgraft.errors import IRError
from torchgraft.ir.model import Model

Params = dict[str, Tensor]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with the RNG seeded to ``seed`` (nothing done for None); the global RNG state is put back after."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise IRError(f"functional: seed must be an int, got {seed!r}")
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _state(module: nn.Module) -> Params:
    named = [*module.named_parameters(), *module.named_buffers()]
    return {k: v.detach().clone() for k, v in named}


@dataclass(frozen=True, eq=False)
class Init:
    """``init(seed)``: fresh parameters and buffers, initialised by the emitted ``build()`` under ``seed``.

    The global RNG is left as it was (``torch.random.fork_rng``). ``init()`` with no seed returns
    a copy of the model's own weights (a model without weights: ``init(seed=0)``). Tied weights
    appear once, under their first name. ``trainable`` lists the parameters not frozen.

    >>> params = init(seed=0)      # doctest: +SKIP
    """

    code: Any
    device: torch.device
    own: Params
    trainable: tuple[str, ...]

    def __call__(self, seed: int | None = None) -> Params:
        if seed is None and self.own:
            return {k: v.clone() for k, v in self.own.items()}
        with _seeded(0 if seed is None else seed, self.device):
            return _state(self.code.materialize(load_weights=False, device=self.device))


@dataclass(frozen=True, eq=False)
class Predict:
    """``predict(params, *inputs, train=False, seed=None, **kw)``: the model's forward with ``params``.

    Pure: the same params and inputs give the same output, and ``params`` is never changed
    (buffers are copied before the call). Eval mode by default. ``train=True`` runs in training
    mode and returns ``(output, buffers)``, the buffers as the forward left them (BatchNorm
    running statistics): put them into ``params`` to keep them. ``seed`` makes random ops
    (dropout) repeatable without touching the global RNG. ``train`` and ``seed`` are keywords
    of ``predict`` itself, so a forward argument of that name cannot be passed.
    ``predict.child("discriminator")`` runs only that submodule, with the same ``params`` dict.

    >>> y = predict(params, x)     # doctest: +SKIP
    """

    module: nn.Module
    path: str
    names: Mapping[str, str]
    """Name in the called module → name in ``params`` (the first name of a tied tensor)."""
    buffers: frozenset[str]
    everything: frozenset[str]

    def child(self, path: str) -> Predict:
        """A ``Predict`` for the submodule at ``path`` (relative to this one) that reads the same ``params``."""
        try:
            sub = self.module.get_submodule(path)
        except AttributeError as e:
            raise IRError(f"functional: no submodule {path!r} ({e})") from None
        prefix = f"{path}."
        names = {k.removeprefix(prefix): v for k, v in _full_names(self.module, self.names).items()
                 if k.startswith(prefix)}
        return Predict(sub, f"{self.path}.{path}" if self.path else path, names, self.buffers, self.everything)

    def _check(self, params: Mapping[str, Tensor]) -> None:
        if not isinstance(params, Mapping):
            raise IRError("predict: params must be a dict of name -> tensor (from init()), got "
                          f"{type(params).__name__}")
        missing = sorted(set(self.names.values()) - set(params))
        unknown = sorted(set(params) - self.everything)
        if missing or unknown:
            raise IRError(f"predict{f' at {self.path!r}' if self.path else ''}: params lack {missing[:5]} and have "
                          f"unknown {unknown[:5]}; pass the dict init() returns (same keys)")

    def __call__(self, params: Mapping[str, Tensor], *args: Any, train: bool = False, seed: int | None = None,
                 **kwargs: Any) -> Any:
        self._check(params)
        fresh = {v: params[v].clone() for v in set(self.names.values()) & self.buffers}  # params stay unchanged
        call = {k: fresh.get(v, params[v]) for k, v in self.names.items()}
        device = next(iter(params.values())).device if params else torch.device("cpu")
        was = self.module.training
        self.module.train(train)
        try:
            with _seeded(seed, device):
                out = torch.func.functional_call(self.module, call, tuple(args), kwargs, strict=True)
        finally:
            self.module.train(was)
        if not train:
            return out
        return out, fresh


def _full_names(module: nn.Module, names: Mapping[str, str]) -> dict[str, str]:
    """Every parameter/buffer name of ``module`` (tied ones under each name) → its name in ``params``."""
    first = {id(t): names[k] for k, t in _named(module, dedup=True)}
    return {k: first[id(t)] for k, t in _named(module, dedup=False)}


def _named(module: nn.Module, dedup: bool) -> list[tuple[str, Tensor]]:
    return [*module.named_parameters(remove_duplicate=dedup), *module.named_buffers(remove_duplicate=dedup)]


def functional(model: Model, device: str | torch.device | None = None) -> tuple[Init, Predict]:
    """``(init, predict)`` for ``model``: see ``Init`` and ``Predict``.

    >>> init, predict = functional(model)                          # doctest: +SKIP
    >>> y = predict(init(seed=0), torch.randn(2, 16))              # doctest: +SKIP
    """
    from torchgraft.backends.torch.emitter import emit

    if not isinstance(model, Model):
        raise IRError(f"functional needs an ir.Model, got {type(model).__name__}")
    code = emit(model)
    dev = torch.device(device if device is not None else "cpu")
    with_weights = bool(model.weights or model.extra_state) and not code.on_meta
    with _seeded(0, dev):  # build() draws from the RNG: keep the caller's state
        module = code.materialize(load_weights=with_weights, device=dev)
    module.requires_grad_(False)  # the template's own tensors are never trained; params are passed in
    own = _state(module) if with_weights else {}
    names = {k: k for k, _ in _named(module, dedup=True)}
    trainable = tuple(k for k, p in module.named_parameters() if k not in set(model.frozen))
    predict = Predict(module, "", _full_names(module, names), frozenset(k for k, _ in module.named_buffers()),
                      frozenset(names))
    return Init(code, dev, own, trainable), predict

"""``lora``: wrap Linear layers with low-rank adapters (LoRA), outputs unchanged until trained.

Each selected ``nn.Linear`` at path ``P`` becomes a ``LoRALinear`` Block (one emitted class,
no torchgraft import needed) holding the original layer as ``base`` and two new layers::

    y = base(x) + lora_B(lora_A(lora_dropout(x))) * (alpha / r)

``lora_A`` is initialised kaiming-uniform (seeded), ``lora_B`` with zeros, so the adapted
model computes exactly what the original did. The original ``P.weight``/``P.bias`` move to
``P.base.weight``/``P.base.bias`` (the report's ``keys_renamed``); ``load_original`` loads a
checkpoint of the original model into the adapted one through that key map. The emitted
``build()`` initialises every layer the torch way (``lora_B`` too, so not zero): start from
``load()`` or ``load_original`` to keep the original outputs.

Only ``Linear`` layers can be wrapped. ``nn.MultiheadAttention`` keeps its input projection
as one fused parameter (``in_proj_weight``) and calls ``out_proj.weight`` functionally, so
neither is a Linear layer LoRA could wrap; selecting one explicitly is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from torchgraft.errors import TorchgraftError
from torchgraft.ir.graph import ChildCall, FunctionCall, Graph, Input, Op
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef, Node
from torchgraft.ir.ownership import moved
from torchgraft.ir.primitives import Dropout, Linear, TorchLayer
from torchgraft.ir.traverse import join
from torchgraft.ir.types import UNKNOWN, TensorType, ValueType
from torchgraft.ir.values import Const, Ref
from torchgraft.passes.base import Match, Pass
from torchgraft.passes.rewrite import fmap
from torchgraft.passes.selectors import Site, parse_selector
from torchgraft.passes.sites import iter_sites

LORA_CLASS = ClassRef("torchgraft.lora", "LoRALinear")
"""The original class recorded on every adapter Block (selectable as ``kind:LoRALinear``)."""

FUSED_LAYERS = frozenset({"MultiheadAttention"})
"""torch.nn layers whose projections are fused parameters, not Linear children LoRA could wrap."""


class LoRAError(TorchgraftError, ValueError):
    """LoRA options are invalid, or the selection names layers LoRA cannot wrap."""


def _retyped(t: ValueType, last: int) -> ValueType:
    if isinstance(t, TensorType) and t.rank:
        return replace(t, shape=t.shape[:-1] + (last,))
    return UNKNOWN


def lora_block(linear: Linear, r: int, alpha: float, dropout: float = 0.0,
               out_type: ValueType = UNKNOWN) -> Block:
    """The ``LoRALinear`` Block wrapping ``linear`` (``out_type``: the Linear's output type, if known)."""
    in_type, r_type = _retyped(out_type, linear.in_features), _retyped(out_type, r)
    children: list[tuple[str, Node]] = [("base", linear)]
    ops = [Op("base", ChildCall("base"), (Ref("x"),), type=out_type)]
    src = "x"
    if dropout > 0:
        children.append(("lora_dropout", Dropout("Dropout", dropout)))
        ops.append(Op("lora_dropout", ChildCall("lora_dropout"), (Ref("x"),), type=in_type))
        src = "lora_dropout"
    children += [("lora_A", Linear("Linear", linear.in_features, r, bias=False)),
                 ("lora_B", Linear("Linear", r, linear.out_features, bias=False))]
    ops += [Op("lora_A", ChildCall("lora_A"), (Ref(src),), type=r_type),
            Op("lora_B", ChildCall("lora_B"), (Ref("lora_A"),), type=out_type)]
    delta = "lora_B"
    scaling = alpha / r
    if scaling != 1.0:
        ops.append(Op("scaled", FunctionCall("operator.mul"), (Ref("lora_B"), Const(scaling)), type=out_type))
        delta = "scaled"
    ops.append(Op("out", FunctionCall("operator.add"), (Ref("base"), Ref(delta)), type=out_type))
    body = Graph((Input("x", in_type),), tuple(ops), Ref("out"))
    return Block(LORA_CLASS, tuple(children), body, method="lora")


@dataclass(frozen=True)
class LoRA(Pass):
    """Wrap every selected Linear in a ``LoRALinear`` adapter; the model's outputs are unchanged.

    Options: ``where`` (a selector; default every Linear, adapters' own layers excluded),
    ``r`` (rank), ``alpha`` (the update is scaled by ``alpha / r``), ``dropout`` (on the
    adapter's input; 0 adds no layer), ``seed`` (for ``lora_A``'s kaiming-uniform init).
    Keys ``P.weight``/``P.bias`` become ``P.base.weight``/``P.base.bias``; new keys
    ``P.lora_A.weight`` (random) and ``P.lora_B.weight`` (zeros). Use ``load_original`` to
    load the original checkpoint into the emitted model.

    Before/after::

        self.fc = nn.Linear(768, 3072)     ->   self.fc = LoRALinear()   # base, lora_A, lora_B
                                                # LoRALinear.forward:
                                                #   return self.base(x) + self.lora_B(self.lora_A(x)) * 2.0
    """

    name: ClassVar[str] = "lora"
    where: str | None = None
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    seed: int = 0

    def _check(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise LoRAError(f"lora: r must be a positive int, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        if not math.isfinite(self.alpha):
            raise LoRAError(f"lora: alpha must be a finite number, got {self.alpha!r}")

    def _selected(self, site: Site, sel: Any) -> bool:
        return isinstance(site.node, Linear) and LORA_CLASS.name not in site.enclosing and bool(sel(site))

    def rewrite(self, model: Model) -> tuple[Model, list[Match]]:
        self._check()
        sel = parse_selector(self.where)
        self._refuse_fused(model, sel)
        weights: dict[str, torch.Tensor] = {}  # only the new adapters: the moved layers' keys follow them
        types: dict[str, ValueType] = {}
        gen = torch.Generator().manual_seed(self.seed)
        matches: list[Match] = []

        def fn(site: Site, spelling: str) -> Node | None:
            node = site.node
            if spelling != "module" or not isinstance(node, Linear) or not self._selected(site, sel):
                return None
            p = site.path
            out_type = model.type_at(p)
            block = lora_block(node, self.r, self.alpha, self.dropout, out_type)  # holds ``node`` as ``base``
            matches.append(Match(p, f"Linear({node.in_features} -> {node.out_features}) + LoRA(r={self.r})"))
            types.update({p: out_type, join(p, "base"): out_type, join(p, "lora_A"): _retyped(out_type, self.r),
                          join(p, "lora_B"): out_type})
            if self.dropout > 0:
                types[join(p, "lora_dropout")] = _retyped(out_type, node.in_features)
            if not model.weights:  # an IR without tensors (structure only) stays without
                return block
            ref = _stored_weight(model.weights, p)
            dtype = ref.dtype if isinstance(ref, torch.Tensor) else torch.float32
            device = ref.device if isinstance(ref, torch.Tensor) else None
            a = torch.empty(self.r, node.in_features, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
            weights[join(p, "lora_A.weight")] = a.to(dtype=dtype, device=device)
            weights[join(p, "lora_B.weight")] = torch.zeros(node.out_features, self.r, dtype=dtype, device=device)
            return block

        new = fmap(model, fn)
        if new is model:
            return model, matches
        _check_shared(model, {m.path for m in matches})
        # weights, frozen flags (a frozen layer's base stays frozen) and ties follow each Linear into its base
        return moved(model, new.root, weights=weights, types=types), matches

    def _refuse_fused(self, model: Model, sel: Any) -> None:
        """An explicit selection that reaches only fused-projection layers is an error, with the reason."""
        if self.where in (None, "", "*"):
            return
        fused, linear = [], False
        for path, node, enclosing in _sites(model):
            site = Site(path, node, enclosing)
            if isinstance(node, TorchLayer) and node.op in FUSED_LAYERS and sel(site):
                fused.append(path)
            linear = linear or self._selected(site, sel)
        if fused and not linear:
            raise LoRAError(
                f"lora{{where={self.where}}} selects {fused[0]} (nn.MultiheadAttention"
                f"{f' and {len(fused) - 1} more' if len(fused) > 1 else ''}), which LoRA cannot wrap: its input "
                "projection is one fused parameter (in_proj_weight, q/k/v stacked) and its out_proj weight is "
                "used functionally, not called as a Linear layer. Select Linear layers instead (e.g. an MLP's "
                "'encoder.layers.*.mlp.*'), or replace the attention with a module built from Linear layers.")

    def notes(self, model: Model) -> list[str]:
        """Things the user should know about this run: attention layers LoRA could not reach."""
        sel = parse_selector(self.where)
        fused = [p for p, n, e in _sites(model) if isinstance(n, TorchLayer) and n.op in FUSED_LAYERS
                 and (self.where in (None, "", "*") or sel(Site(p, n, e)))]
        if not fused:
            return []
        return [f"{len(fused)} nn.MultiheadAttention layer(s) (e.g. {fused[0]}) were not adapted: their q/k/v "
                "projection is a fused parameter (in_proj_weight) and out_proj is used functionally, so there "
                "is no Linear layer to wrap"]


def _stored_weight(weights: Mapping[str, Any], path: str) -> Any:
    """The Linear at ``path``'s weight, or (reparametrized) the first tensor it is stored as; None if none."""
    prefix = join(path, "")
    found = weights.get(join(path, "weight"))
    return found if found is not None else next((v for k, v in weights.items() if k.startswith(prefix)), None)


def _sites(model: Model) -> list[tuple[str, Node, tuple[str, ...]]]:
    return [(s.path, s.node, s.enclosing) for s in iter_sites(model, graphs=False)]


def _check_shared(model: Model, wrapped: set[str]) -> None:
    for alias, target in model.ties:
        if (alias in wrapped) != (target in wrapped):
            raise LoRAError(f"lora: the Linear at {target} is shared with {alias}; select both paths or neither "
                            "so the shared layer is wrapped once")


def load_original(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                  key_map: Mapping[str, str]) -> nn.Module:
    """Load a checkpoint of the original (pre-LoRA) model into the adapted ``module``, ``strict=True``.

    Keys are renamed through ``key_map`` (``LoRA().key_map(before, after)``, derived from the edit:
    ``P.weight -> P.base.weight``; or the pass report's ``keys_renamed``). The adapters are not in the
    checkpoint: ``lora_A`` keeps the module's own initialisation and ``lora_B`` is set to zero, so the
    loaded model computes exactly what the original did (whether ``module`` came from ``load()`` or a
    fresh ``build()``). Any other missing or unexpected key is an error. Returns ``module``.
    """
    remapped = {key_map.get(k, k): v for k, v in state_dict.items()}
    for key, value in module.state_dict().items():
        if key in remapped:
            continue
        parts = key.split(".")
        if "lora_A" in parts[:-1]:
            remapped[key] = value
        elif "lora_B" in parts[:-1]:
            remapped[key] = torch.zeros_like(value)
    module.load_state_dict(remapped, strict=True)
    return module

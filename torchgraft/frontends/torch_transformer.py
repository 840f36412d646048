"""``nn.Transformer`` and its parts as layers: constructor arguments recovered from an instance.

``nn.TransformerEncoderLayer``/``DecoderLayer``, ``nn.TransformerEncoder``/``Decoder`` and
``nn.Transformer`` are kept whole, like ``nn.MultiheadAttention``: the emitted model builds the same
torch layer (``nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2)``), so its forward --
fast path, nested tensors, mask checks and all -- is torch's own and decides at run time exactly as
the original does. Tracing into it would freeze the fast-path decision (``torch.is_grad_enabled()``,
``self.training``) that torch makes per call.

Nested layers (``encoder_layer``, ``norm``, ``custom_encoder``) become nested primitives. What the
attributes cannot show (a user activation function) is refused; what they can show is checked by
``same_layer``: the rebuilt layer must match the original module by module, including the plain
attributes ``extra_repr`` leaves out (dropout rates, activation functions, ``norm_first``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import nn

Convert = Callable[[nn.Module], Any]  # a child module -> its primitive (raises ValueError when it has none)

_ACTIVATIONS = {F.relu: "relu", F.gelu: "gelu"}


def _activation(layer: Any, convert: Convert) -> Any:
    act = layer.activation
    if isinstance(act, nn.Module):
        return convert(act)
    name = _ACTIVATIONS.get(act)
    if name is None:
        raise ValueError(f"activation {act!r} is neither 'relu', 'gelu' nor a torch.nn module: it cannot be "
                         "written as a constructor argument")
    return name


def _layer(mod: Any, convert: Convert) -> dict[str, Any]:
    attn = mod.self_attn
    return {"d_model": attn.embed_dim, "nhead": attn.num_heads, "dim_feedforward": mod.linear1.out_features,
            "dropout": mod.dropout.p, "activation": _activation(mod, convert), "layer_norm_eps": mod.norm1.eps,
            "batch_first": attn.batch_first, "norm_first": mod.norm_first, "bias": mod.linear1.bias is not None}


def _stack(mod: Any, convert: Convert, layer_arg: str) -> dict[str, Any]:
    kw: dict[str, Any] = {layer_arg: convert(mod.layers[0]), "num_layers": mod.num_layers,
                          "norm": None if mod.norm is None else convert(mod.norm)}
    if isinstance(mod, nn.TransformerEncoder):
        kw.update(enable_nested_tensor=mod.enable_nested_tensor, mask_check=mod.mask_check)
    return kw


def _transformer(mod: Any, convert: Convert) -> dict[str, Any]:
    enc, dec = mod.encoder, mod.decoder
    standard = type(enc) is nn.TransformerEncoder and type(dec) is nn.TransformerDecoder
    if not standard:
        return {"d_model": mod.d_model, "nhead": mod.nhead, "custom_encoder": convert(enc),
                "custom_decoder": convert(dec), "batch_first": mod.batch_first}
    kw = _layer(enc.layers[0], convert)
    kw.pop("d_model"), kw.pop("nhead")
    return {"d_model": mod.d_model, "nhead": mod.nhead, "num_encoder_layers": enc.num_layers,
            "num_decoder_layers": dec.num_layers, **kw}


RECOVER: dict[str, Callable[[Any, Convert], dict[str, Any]]] = {
    "TransformerEncoderLayer": _layer,
    "TransformerDecoderLayer": _layer,
    "TransformerEncoder": lambda m, c: _stack(m, c, "encoder_layer"),
    "TransformerDecoder": lambda m, c: _stack(m, c, "decoder_layer"),
    "Transformer": _transformer,
}

_PLAIN = (bool, int, float, str, type(None))


def _fingerprint(mod: nn.Module) -> list[tuple[str, str, str, tuple[tuple[str, Any], ...]]]:
    """Per submodule: path, class, ``extra_repr`` and plain or function attributes (``activation``)."""
    out = []
    for path, sub in mod.named_modules():
        attrs = tuple(sorted((k, v) for k, v in vars(sub).items()
                             if not k.startswith("_") and k != "training" and (isinstance(v, _PLAIN) or callable(v))
                             and not isinstance(v, nn.Module)))
        out.append((path, type(sub).__qualname__, sub.extra_repr(), attrs))
    return out


def same_layer(original: nn.Module, rebuilt: nn.Module) -> bool:
    """Whether ``rebuilt`` has the same module tree, settings and functions as ``original``."""
    return _fingerprint(original) == _fingerprint(rebuilt)

"""transformers decoders and encoder-decoders at their DEFAULT settings (issue 10, families 6, 8, 9, 13).

Tiny configs, random weights, no ``use_cache`` argument: the config's ``use_cache=True`` would
return a cache object, so capture leaves it out (``frontends.cache_free``) and says so in
``report.notes``. Each model: capture -> emit -> save -> a fresh process where ``import
torchgraft`` fails builds the emitted model and loads the original state_dict ``strict=True``
-> every output equals eager within 1e-5 x max|output| at the example and at another batch
size and length. The emitted model refuses ``use_cache=True`` with a ValueError. Mamba's
selective scan loops over the sequence length in library code: the loop is unrolled and
guarded, so another batch size matches and another length is refused with a clear message.
BART shares its token embedding between ``shared``, ``encoder.embed_tokens`` and
``decoder.embed_tokens``: one parameter in the emitted model too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from zoo import assert_names_defined, import_torchvision

import torchgraft

import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
         "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
SEQ2SEQ = {"vocab_size": 100, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
           "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "pad_token_id": 0,
           "bos_token_id": 0, "eos_token_id": 0, "decoder_start_token_id": 0}

Inputs = dict[str, torch.Tensor]


def _ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(1, 100, (batch, length))


def _decoder_only(batch: int, length: int) -> Inputs:
    return {"input_ids": _ids(batch, length)}


def _seq2seq(batch: int, length: int) -> Inputs:
    return {"input_ids": _ids(batch, length), "decoder_input_ids": _ids(batch, max(2, length - 3))}


def _whisper(batch: int, length: int) -> Inputs:  # the encoder wants exactly 2 x max_source_positions frames
    return {"input_features": torch.randn(batch, 8, 32), "decoder_input_ids": _ids(batch, length)}


def _cfg(cls: str, **kw: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        model_cls = getattr(transformers, cls)
        return model_cls(model_cls.config_class(**kw))  # type: ignore[no-any-return]
    return build


# name -> (build, inputs(batch, length), length a guard pins or None)
MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[int, int], Inputs], int | None]] = {
    "llama_causal_lm": (_cfg("LlamaForCausalLM", **SMALL), _decoder_only, None),
    "llama": (_cfg("LlamaModel", **SMALL), _decoder_only, None),
    "mistral": (_cfg("MistralModel", **SMALL), _decoder_only, None),
    "qwen2": (_cfg("Qwen2Model", **SMALL), _decoder_only, None),
    "gemma": (_cfg("GemmaModel", head_dim=8, **SMALL), _decoder_only, None),
    "phi": (_cfg("PhiModel", **SMALL), _decoder_only, None),
    "opt": (_cfg("OPTModel", vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                 word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=0,
                 eos_token_id=0), _decoder_only, None),
    "bart": (_cfg("BartModel", max_position_embeddings=64, **SEQ2SEQ), _seq2seq, None),
    "t5": (_cfg("T5Model", vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                decoder_start_token_id=0, pad_token_id=0), _seq2seq, None),
    "whisper": (_cfg("WhisperModel", num_mel_bins=8, max_source_positions=16, max_target_positions=32, **SEQ2SEQ),
                _whisper, None),
    "mamba": (_cfg("MambaModel", vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=2,
                   pad_token_id=0, bos_token_id=0, eos_token_id=0), _decoder_only, 7),
}
FAST = {"llama_causal_lm", "bart", "mamba"}

_CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None  # the emitted code must not need torchgraft
import torch
from safetensors.torch import load_file, save_file
folder, extra = sys.argv[1], json.loads(sys.argv[2])
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
mod.load()
model = mod.build().eval()
model.load_state_dict(load_file(folder + "/original.safetensors"), strict=True)
calls = {}
for key, value in load_file(folder + "/inputs.safetensors").items():
    call, name = key.split(".", 1)
    calls.setdefault(call, {})[name] = value
outs, refused = {}, {}
with torch.no_grad():
    for call, kwargs in calls.items():
        try:
            out = model(**kwargs, **extra.get(call, {}))
        except ValueError as e:
            refused[call] = str(e)
            continue
        outs.update({f"{call}.{k}": v for k, v in out.items()})
save_file(outs, folder + "/outputs.safetensors")
with open(folder + "/refused.json", "w") as f:
    json.dump(refused, f)
"""


def _run_emitted(folder: Path, calls: dict[str, Inputs], extra: dict[str, dict[str, Any]],
                 state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Outputs (``call.key``) and refusal messages (per call) of the emitted model in a fresh process
    where torchgraft cannot be imported, built and loaded with ``state`` strict=True."""
    from safetensors.torch import load_file, save_file

    flat = {f"{c}.{k}": v.clone() for c, kw in calls.items() for k, v in kw.items()}  # no shared storage
    save_file(flat, str(folder / "inputs.safetensors"))
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / "original.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), json.dumps(extra)], capture_output=True,
                          text=True, env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(folder / "outputs.safetensors")), json.loads((folder / "refused.json").read_text())


def _eager(model: torch.nn.Module, calls: dict[str, Inputs]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for call, kwargs in calls.items():
            out.update({f"{call}.{k}": v for k, v in model(**kwargs).items() if isinstance(v, torch.Tensor)})
    return out


def _params() -> list[Any]:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in sorted(MODELS)]


@pytest.mark.parametrize("name", _params())
def test_default_settings_round_trip(name: str, tmp_path: Path) -> None:
    build, make, pinned = MODELS[name]
    model = build().eval()
    assert model.config.use_cache is True
    example, other_batch = make(2, 7), make(3, 7)
    other = make(3, 11)
    ir_model = torchgraft.capture(model, (), example)  # the default call: no use_cache argument

    assert model.config.use_cache is True  # the user's config is left as it was
    with torch.no_grad():
        assert any(k in ("past_key_values", "cache") for k in model(**example))  # still returns its cache
    assert not ir_model.report.opaque, ir_model.report.summary()
    assert any("without a key/value cache" in n for n in ir_model.report.notes)
    assert any("use_cache" in m and "incremental decoding" in m for _, _, m in ir_model.report.guards)
    code = torchgraft.emit(ir_model)
    code.save(tmp_path)
    assert_names_defined(tmp_path / "model.py")
    assert list(code.materialize(load_weights=False, device="meta").state_dict()) == list(model.state_dict())

    calls = {"example": example, "batch": other_batch, "other": other, "cache": example}
    outs, refused = _run_emitted(tmp_path, calls, {"cache": {"use_cache": True}}, model.state_dict())
    assert "incremental decoding is not supported" in refused.pop("cache")
    if pinned is not None:  # a loop over the length, unrolled and guarded: another length is refused
        message = refused.pop("other")
        assert f"loops over range({pinned})" in message and "capture with an example of the size" in message
        del calls["other"]
    assert not refused, refused
    refs = _eager(model, {k: v for k, v in calls.items() if k != "cache"})
    assert set(outs) == set(refs), (sorted(outs), sorted(refs))  # the cache is the only output left out
    for key, ref in refs.items():
        torch.testing.assert_close(outs[key], ref, atol=1e-5 * ref.abs().max().item(), rtol=0, msg=key)


def test_bart_shared_embedding_stays_one_parameter() -> None:
    build, make, _ = MODELS["bart"]
    model = build().eval()
    ir_model = torchgraft.capture(model, (), make(2, 7))
    rebuilt = torchgraft.emit(ir_model).materialize()
    assert rebuilt.encoder.embed_tokens.weight is rebuilt.shared.weight
    assert rebuilt.decoder.embed_tokens.weight is rebuilt.shared.weight
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_explicit_use_cache_false_has_no_note() -> None:
    build, make, _ = MODELS["llama"]
    ir_model = torchgraft.capture(build().eval(), (), {**make(2, 7), "use_cache": False})
    assert not ir_model.report.notes
    assert not ir_model.report.opaque


def test_asking_for_a_cache_at_capture_says_what_to_do() -> None:
    build, make, _ = MODELS["llama"]
    ir_model = torchgraft.capture(build().eval(), (), {**make(2, 7), "use_cache": True})
    assert not ir_model.report.notes  # the cache was asked for: nothing is switched off behind the user's back
    with pytest.raises(torchgraft.EmitError, match="key/value cache.*use_cache=False"):
        torchgraft.emit(ir_model)


def test_encoder_that_returns_no_cache_is_left_alone() -> None:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    assert getattr(model.config, "use_cache", True)  # says True (or nothing), yet an encoder returns no cache
    ir_model = torchgraft.capture(model, (), {"input_ids": _ids(2, 7)})
    assert not ir_model.report.notes
    assert not any("key/value cache" in m for _, _, m in ir_model.report.guards)


def test_check_passes_without_the_left_out_cache() -> None:
    build, make, _ = MODELS["llama"]
    model = build().eval()
    example = make(2, 7)
    emitted = torchgraft.emit(torchgraft.capture(model, (), example)).materialize()
    emitted.load_state_dict(model.state_dict(), strict=True)
    report = torchgraft.check(model, emitted, (), example, probes=False)
    assert report.ok, str(report)
    assert "key/value cache: not compared" in str(report)


def test_model_in_train_mode_that_caches_only_in_eval_mode() -> None:
    build, make, _ = MODELS["mamba"]  # MambaModel makes a cache only when not training
    model = build().train()
    example = make(2, 7)
    ir_model = torchgraft.capture(model, (), example)
    assert ir_model.report.notes and not ir_model.report.opaque
    assert all(m.training for m in model.modules())  # capture's eval-mode probe put every flag back
    emitted = torchgraft.emit(ir_model).materialize()
    emitted.load_state_dict(model.state_dict(), strict=True)
    model.eval(), emitted.eval()
    with torch.no_grad():
        ref, out = model(**example)["last_hidden_state"], emitted(**example)["last_hidden_state"]
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)

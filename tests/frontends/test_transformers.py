"""transformers models (tiny configs, random weights): capture -> emit -> fresh-process reload.

fx cannot trace any of these (kwargs-only inputs, input validation, cache objects), so
their blocks go through the fallback trace. Checked on every output tensor: the emitted
model, loaded in a process where torchgraft cannot be imported, equals eager within
1e-5 x max|output|; the original state_dict loads strict=True; model.py imports only
torch, safetensors and the standard library; it also runs at another batch size and length.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from zoo import assert_names_defined, import_torchvision

import torchgraft

import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
transformers = pytest.importorskip("transformers")

STDLIB = {"pathlib", "collections", "math", "typing", "types", "functools", "itertools", "operator", "warnings"}


def _bert() -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg), {}


def _gpt2() -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg), {"use_cache": False}


def _llama() -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg), {"use_cache": False}


def _distilbert() -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                        max_position_embeddings=64)
    return transformers.DistilBertModel(cfg), {}


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama, "distilbert": _distilbert}

_CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None
import torch
from safetensors.torch import load_file, save_file
folder, extra = sys.argv[1], json.loads(sys.argv[2])
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = mod.load().eval()
built = mod.build()
built.load_state_dict(load_file(folder + "/original.safetensors"), strict=True)
outs = {}
with torch.no_grad():
    for key, ids in load_file(folder + "/inputs.safetensors").items():
        for name, value in model(input_ids=ids, **extra).items():
            outs[f"{key}.{name}"] = value
save_file(outs, folder + "/outputs.safetensors")
"""


def _flat(out: Any, key: str) -> dict[str, torch.Tensor]:
    return {f"{key}.{k}": v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _run_emitted(folder: Path, inputs: dict[str, torch.Tensor], extra: dict[str, Any],
                 original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    save_file(inputs, str(folder / "inputs.safetensors"))
    save_file({k: v.contiguous().clone() for k, v in original.items()}, str(folder / "original.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), json.dumps(extra)], capture_output=True,
                          text=True, env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(folder / "outputs.safetensors"))


def _imports(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transformers_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, extra = MODELS[name]()
    model.eval()
    inputs = {"a": torch.randint(1, 100, (2, 10)), "b": torch.randint(1, 100, (3, 7))}
    with torch.no_grad():
        refs = {k: v for key in inputs for k, v in _flat(model(input_ids=inputs[key], **extra), key).items()}

    ir_model = torchgraft.capture(model, (), {"input_ids": inputs["a"], **extra})
    assert not ir_model.report.opaque, ir_model.report.summary()
    assert "trace" in ir_model.report.methods.values()
    assert ir_model.inputs[0].name == "input_ids"
    code = torchgraft.emit(ir_model)
    assert _imports(code.source) <= {"torch", "safetensors"} | STDLIB, _imports(code.source)
    code.save(tmp_path)
    assert_names_defined(tmp_path / "model.py")

    outs = _run_emitted(tmp_path, inputs, extra, model.state_dict())
    assert set(outs) == set(refs)
    for key, ref in refs.items():
        torch.testing.assert_close(outs[key], ref, atol=1e-5 * ref.abs().max().item(), rtol=0, msg=key)
    assert list(code.materialize(load_weights=False, device="meta").state_dict()) == list(model.state_dict())


def test_gpt2_tied_weights_stay_one_parameter() -> None:
    model, extra = _gpt2()
    ir_model = torchgraft.capture(model.eval(), (), {"input_ids": torch.randint(1, 100, (2, 6)), **extra})
    assert ("lm_head.weight", "transformer.wte.weight") in ir_model.ties
    rebuilt = torchgraft.emit(ir_model).materialize()
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight


def test_meta_device_capture_materialises_nothing(tmp_path: Path) -> None:
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 1000, (1, 8), device="meta")
    ir_model = torchgraft.capture(model, (), {"input_ids": ids, "use_cache": False})
    assert not ir_model.report.opaque
    assert all(t.device.type == "meta" for t in ir_model.weights.values())
    code = torchgraft.emit(ir_model)
    with pytest.warns(UserWarning, match="meta device"):
        code.save(tmp_path)
    assert (tmp_path / "model.py").exists() and not (tmp_path / "weights.safetensors").exists()
    built = code.materialize(load_weights=False, device="meta")
    assert list(built.state_dict()) == list(model.state_dict())

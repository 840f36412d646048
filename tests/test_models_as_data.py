"""``docs/models-as-data.md`` runs, and each model its example builds is emitted, reloaded in a fresh
process (torchgraft not importable there) and compared with the in-process model and plain torch."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import torchgraft as tg
from tests.frontends.fresh import run_emitted

PAGE = Path(__file__).resolve().parents[1] / "docs" / "models-as-data.md"
TOL: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The page's python blocks run in order in one namespace (as a user's script would)."""
    folder = tmp_path_factory.mktemp("models_as_data")
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {"__name__": "models_as_data"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for i, code in enumerate(blocks):
            script = folder / f"block_{i}.py"
            script.write_text(code)
            exec(compile(code, str(script), "exec"), namespace)  # the page's own code
    finally:
        os.chdir(cwd)
    return namespace


def _fresh(model: tg.ir.Model, inputs: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    tg.emit(model).save(folder)
    outputs, _ = run_emitted(folder, inputs)
    return outputs


def test_structural_net_reloads_and_equals_plain_torch(page: dict[str, Any], tmp_path: Path) -> None:
    xs = {"b1": torch.randn(1, 3, 32, 32), "b4": torch.randn(4, 3, 32, 32)}
    out = _fresh(page["model"], xs, tmp_path)
    for key, x in xs.items():
        torch.testing.assert_close(out["eval." + key], page["reference"](x), **TOL)


def test_pipe_and_two_symbols_reload(page: dict[str, Any], tmp_path: Path) -> None:
    mlp = page["classifier"]
    xs = {"b2": torch.randn(2, 784), "b5": torch.randn(5, 784)}
    out = _fresh(mlp, xs, tmp_path / "mlp")
    w = mlp.weights
    for key, x in xs.items():
        h = torch.relu(x @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]  # the pipe is one flat Chain
        torch.testing.assert_close(out["eval." + key], torch.softmax(h, 1), **TOL)
    seq = page["seq"]
    tokens = {"t3": torch.randint(0, 100, (2, 3)), "t9": torch.randint(0, 100, (3, 9))}
    out = _fresh(seq, tokens, tmp_path / "seq")
    w = seq.weights
    for key, t in tokens.items():
        ref = w["0.weight"][t] @ w["1.weight"].T + w["1.bias"]
        torch.testing.assert_close(out["eval." + key], ref, **TOL)


def test_composed_gan_reloads_and_equals_d_of_g(page: dict[str, Any], tmp_path: Path) -> None:
    gan = page["gan"]
    zs = {"b2": torch.randn(2, 8), "b6": torch.randn(6, 8)}
    out = _fresh(gan, zs, tmp_path)
    w = gan.weights

    def lin(h: torch.Tensor, p: str) -> torch.Tensor:
        return h @ w[p + ".weight"].T + w[p + ".bias"]

    for key, z in zs.items():
        g = lin(torch.relu(lin(z, "generator.0.0")), "generator.1")
        d = lin(torch.nn.functional.leaky_relu(lin(g, "discriminator.0"), 0.2), "discriminator.2")
        torch.testing.assert_close(out["eval." + key], d, **TOL)


def test_desugared_and_named_models_reload(page: dict[str, Any], tmp_path: Path) -> None:
    original = page["original"]
    xs = {"b1": torch.randn(1, 3, 16, 16), "b3": torch.randn(3, 3, 16, 16)}
    for name in ("flat", "named"):
        out = _fresh(page[name].model, xs, tmp_path / name)
        with torch.no_grad():
            for key, x in xs.items():
                torch.testing.assert_close(out["eval." + key], original(x), **TOL)
    assert "class Residual" in (tmp_path / "named" / "model.py").read_text()
    assert page["flat"].reports[0].keys_renamed["1.reduce.weight"] == "1.body.reduce.weight"


def test_fmap_result_reloads(page: dict[str, Any], tmp_path: Path) -> None:
    tanh_net = page["tanh_net"]
    x = {"b2": torch.randn(2, 3, 32, 32)}
    out = _fresh(tanh_net, x, tmp_path)
    assert "nn.Tanh()" in (tmp_path / "model.py").read_text()
    in_process = tg.emit(tanh_net).materialize().eval()
    with torch.no_grad():
        torch.testing.assert_close(out["eval.b2"], in_process(x["b2"]), **TOL)

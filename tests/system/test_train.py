"""A GAN and an autoencoder as Systems: emitted losses equal the eager loss functions, and system.py
trains on its own in a fresh process exactly as a hand-written alternating loop does."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import torchgraft as tg
from tests.system import systems
from tests.system.fresh import train_emitted
from torchgraft import ir
from torchgraft.system import System, SystemCode

STEPS = 30


@pytest.fixture(scope="module")
def gan() -> tuple[System, nn.Module]:
    disc = systems.discriminator_module()
    return systems.gan(disc), disc


@pytest.fixture(scope="module")
def ae() -> tuple[System, nn.Module]:
    dec = systems.decoder_module()
    return systems.autoencoder(dec), dec


def _eager_models(system: System, originals: dict[str, nn.Module]) -> SimpleNamespace:
    """The models in plain torch: the original module where there is one, else the emitted model."""
    return SimpleNamespace(**{n: copy.deepcopy(originals[n]) if n in originals else tg.emit(m).materialize()
                              for n, m in system.models.items()})


@pytest.mark.parametrize("n", [4, 7])
def test_emitted_gan_losses_equal_eager(gan: tuple[System, nn.Module], n: int) -> None:
    system, disc = gan
    emitted = tg.emit(system).materialize()
    m = _eager_models(system, {"discriminator": disc})
    batch = systems.gan_batch(n, seed=5)
    got = emitted.losses(batch)
    assert list(got) == ["generator", "discriminator"]
    assert_close(got["generator"], systems.generator_loss(m, batch), rtol=1e-5, atol=1e-6)
    assert_close(got["discriminator"], systems.discriminator_loss(m, batch), rtol=1e-5, atol=1e-6)
    assert_close(emitted.loss(batch), got["generator"] + got["discriminator"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [4, 9])
def test_emitted_autoencoder_losses_equal_eager(ae: tuple[System, nn.Module], n: int) -> None:
    system, dec = ae
    emitted = tg.emit(system).materialize()
    m = _eager_models(system, {"decoder": dec})
    batch = systems.ae_batch(n, seed=6)
    got = emitted.losses(batch)
    assert_close(got["encoder"], systems.encoder_loss(m, batch), rtol=1e-5, atol=1e-6)
    assert_close(got["decoder"], systems.reconstruction(m, batch), rtol=1e-5, atol=1e-6)
    assert_close(emitted.loss(batch), got["encoder"] + 0.5 * got["decoder"], rtol=1e-5, atol=1e-6)


def test_system_model_is_valid_ir_and_keys_are_the_models(gan: tuple[System, nn.Module]) -> None:
    system, _ = gan
    ir.verify(system.model)
    want = {f"{n}.{k}" for n, m in system.models.items() for k in m.weights}
    assert set(system.model.weights) == want
    assert set(tg.emit(system).materialize().state_dict()) == want
    assert system.model.root.children[0][1] is system.models["generator"].root  # the model's own IR


def _reference_training(system: System, originals: dict[str, nn.Module], batches: list[dict[str, torch.Tensor]],
                        optimizers: dict[str, type], options: dict[str, dict], weights: dict[str, float]
                        ) -> dict[str, list[float]]:
    """Alternating updates written by hand: per model in turn, zero grads, backward its weighted loss, step."""
    m = _eager_models(system, originals)
    opts = {n: optimizers[n](getattr(m, n).parameters(), **options[n]) for n in system.losses}
    out: dict[str, list[float]] = {n: [] for n in system.losses}
    for batch in batches:
        for name, fn in system.losses.items():
            for module in vars(m).values():
                module.zero_grad(set_to_none=True)
            loss = fn(m, batch)
            (weights.get(name, 1.0) * loss).backward()
            opts[name].step()
            out[name].append(loss.item())
    return out


def _stack(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in batches]) for k in batches[0]}


def test_system_py_trains_alone_in_a_fresh_process(gan: tuple[System, nn.Module], ae: tuple[System, nn.Module],
                                                   tmp_path: Path) -> None:
    (gan_system, disc), (ae_system, dec) = gan, ae
    code = tg.emit(gan_system)
    assert isinstance(code, SystemCode)
    folders = {"gan": tmp_path / "gan", "ae": tmp_path / "ae"}
    assert code.save(folders["gan"]) == folders["gan"] / "system.py"
    assert not (folders["gan"] / "model.py").exists()
    tg.emit(ae_system).save(folders["ae"])
    gan_batches = [systems.gan_batch(8, seed=100 + i) for i in range(STEPS)]
    ae_batches = [systems.ae_batch(8, seed=200 + i) for i in range(STEPS)]
    result = train_emitted(folders, {"gan": _stack(gan_batches), "ae": _stack(ae_batches)})

    adam, sgd = torch.optim.Adam, torch.optim.SGD
    want_gan = _reference_training(gan_system, {"discriminator": disc}, gan_batches, {"generator": adam,
                                   "discriminator": adam}, {n: o for n, (_, o) in systems.GAN_OPTIMIZERS.items()}, {})
    want_ae = _reference_training(ae_system, {"decoder": dec}, ae_batches, {"encoder": sgd, "decoder": sgd},
                                  {n: o for n, (_, o) in systems.AE_OPTIMIZERS.items()}, systems.AE_WEIGHTS)
    for got, want in ((result["gan"]["losses"], want_gan), (result["ae"]["losses"], want_ae)):
        assert list(got) == list(want)
        for name in want:
            assert_close(torch.tensor(got[name]), torch.tensor(want[name]), rtol=1e-4, atol=1e-5)

    def falls(values: list[float]) -> bool:
        return sum(values[-3:]) / 3 < sum(values[:3]) / 3

    assert falls(result["ae"]["losses"]["decoder"]) and falls(result["ae"]["losses"]["encoder"])
    assert result["ae"]["after"] < result["ae"]["before"]
    assert falls(result["gan"]["losses"]["discriminator"])  # the critic learns to tell the two apart
    for name, res in result.items():  # every parameter trains, each in its own model's optimizer only
        system = gan_system if name == "gan" else ae_system
        assert res["optimized"] == {n: sorted(k for k in system.model.weights if k.startswith(n + "."))
                                    for n in system.losses}
        assert all(not torch.equal(res["trained"][k], system.model.weights[k]) for k in system.model.weights
                   if k.endswith("weight"))

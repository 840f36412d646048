"""system.py on a GPU: ``setup(batch)`` moves the system to the batch's device, and training there
follows the CPU run; a System may also be captured from an example batch on the GPU."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import torchgraft as tg
from tests.system import systems

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cuda() for k, v in batch.items()}


def test_training_on_the_gpu_follows_the_cpu() -> None:
    code = tg.emit(systems.gan(systems.discriminator_module()))
    batches = [systems.gan_batch(16, seed=300 + i) for i in range(10)]
    on_cpu = code.materialize().setup(batches[0])
    on_gpu = code.materialize().setup(_cuda(batches[0]))
    assert all(p.is_cuda for p in on_gpu.parameters())
    assert all(p.is_cuda for o in on_gpu.optimizers.values() for g in o.param_groups for p in g["params"])
    for step, batch in enumerate(batches):
        want = on_cpu.training_step(batch, step)
        got = on_gpu.training_step(_cuda(batch), step)
        for name in want:
            assert got[name].is_cuda
            assert_close(got[name].cpu(), want[name], rtol=1e-4, atol=1e-5)
    for key, value in on_cpu.state_dict().items():
        assert_close(on_gpu.state_dict()[key].cpu(), value, rtol=1e-4, atol=1e-5)


def test_system_captured_from_a_gpu_batch() -> None:
    dec = systems.decoder_module()
    system = systems.autoencoder(dec)
    gpu_system = type(system)(models=system.models, losses=system.losses, optimizers=system.optimizers,
                              loss_weights=systems.AE_WEIGHTS, example_batch=_cuda(systems.ae_batch(4)))
    batch = systems.ae_batch(6, seed=9)
    want = tg.emit(system).materialize().losses(batch)
    emitted = tg.emit(gpu_system).materialize().cuda()
    got = emitted.losses(_cuda(batch))
    for name in want:
        assert_close(got[name].cpu(), want[name], rtol=1e-4, atol=1e-5)

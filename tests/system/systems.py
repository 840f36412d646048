"""The systems the tests train: a GAN and an autoencoder, with their plain-torch losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torchgraft as tg
from torchgraft import ir
from torchgraft.system import System

GAN_OPTIMIZERS = {"generator": ("Adam", {"lr": 2e-3, "betas": (0.5, 0.999)}), "discriminator": ("Adam", {"lr": 2e-3})}
AE_OPTIMIZERS = {"encoder": ("SGD", {"lr": 0.05, "momentum": 0.9}), "decoder": ("SGD", {"lr": 0.05, "momentum": 0.9})}
AE_WEIGHTS = {"encoder": 1.0, "decoder": 0.5}


def generator_loss(m, batch):  # type: ignore[no-untyped-def]
    logits = m.discriminator(m.generator(batch["z"]))
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def discriminator_loss(m, batch):  # type: ignore[no-untyped-def]
    real = m.discriminator(batch["x"])
    fake = m.discriminator(m.generator(batch["z"]).detach())
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def reconstruction(m, batch):  # type: ignore[no-untyped-def]
    return F.mse_loss(m.decoder(m.encoder(batch["x"])), batch["x"])


def encoder_loss(m, batch):  # type: ignore[no-untyped-def]
    code = m.encoder(batch["x"])
    return F.mse_loss(m.decoder(code), batch["x"]) + 1e-3 * code.pow(2).mean()


def discriminator_module() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


def gan_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"z": torch.randn(n, 8, generator=g), "x": torch.randn(n, 16, generator=g) * 0.5 + 2.0}


def gan(disc: nn.Module) -> System:
    """The issue's GAN: a built generator, a captured discriminator."""
    generator = tg.build(ir.Chain(ir.LinearLayer(8, 32), ir.ReLU(), ir.LinearLayer(32, 16)),
                         ir.TensorType(("N", 8)), seed=0)
    discriminator = tg.capture(disc, (torch.randn(4, 16),))
    return System(models={"generator": generator, "discriminator": discriminator},
                  losses={"generator": generator_loss, "discriminator": discriminator_loss},
                  optimizers=GAN_OPTIMIZERS, trainable="*", example_batch=gan_batch(4))


def decoder_module() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 16))


def ae_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linspace(-1, 1, 16 * 3).reshape(3, 16)
    return {"x": torch.randn(n, 3, generator=g) @ basis}


def autoencoder(dec: nn.Module) -> System:
    """An autoencoder: a built encoder, a captured decoder, weighted losses."""
    encoder = tg.build(ir.Chain(ir.LinearLayer(16, 32), ir.Tanh(), ir.LinearLayer(32, 4)),
                       ir.TensorType(("N", 16)), seed=3)
    decoder = tg.capture(dec, (torch.randn(4, 4),))
    return System(models={"encoder": encoder, "decoder": decoder},
                  losses={"encoder": encoder_loss, "decoder": reconstruction},
                  optimizers=AE_OPTIMIZERS, loss_weights=AE_WEIGHTS, example_batch=ae_batch(4))

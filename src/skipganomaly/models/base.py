"""What every adversarial anomaly model shares: two optimiser groups and a resettable discriminator.

A model subclasses :class:`AdversarialAnomalyModel`, owns ``self.discriminator`` (everything else
is the generator side: encoders, decoders, generators) and implements ``training_losses`` and
``score`` (see :mod:`skipganomaly.training.trainer`).
"""

from __future__ import annotations

from torch import nn

from .blocks import dcgan_init_


class AdversarialAnomalyModel(nn.Module):
    name: str = ""
    # Whether ``score`` needs autograd (AnoGAN optimises a latent per image). The scorer then runs
    # it under ``no_grad`` instead of ``inference_mode`` and the model enables gradients itself.
    score_needs_grad: bool = False
    discriminator: nn.Module

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser: the discriminator, and everything else (the generator side)."""
        discriminator = list(self.discriminator.parameters())
        own = {id(p) for p in discriminator}
        return {
            "generator": [p for p in self.parameters() if id(p) not in own],
            "discriminator": discriminator,
        }

    def reset_discriminator(self) -> None:
        """Re-initialise D, used when its loss collapses and it stops giving G a signal."""
        self.discriminator.apply(dcgan_init_)

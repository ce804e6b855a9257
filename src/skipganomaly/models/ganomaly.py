"""GANomaly (Akcay, Atapour-Abarghouei, Breckon, ACCV 2018), a baseline of Table I.

* :class:`GANomalyGenerator`: encoder-decoder-encoder. G_E maps x to a latent z (size nz), G_D maps
  z back to x_hat, and a second encoder E maps x_hat to z_hat. All three are the shared DCGAN
  blocks; there are no skip connections (that is what Skip-GANomaly adds).
* The discriminator is the shared DCGAN discriminator; its 4x4 feature map is f(.).
* Generator loss: w_adv * ||f(x) - f(x_hat)||_2 (feature matching, as the official code trains the
  adversarial term) + w_con * ||x - x_hat||_1 + w_lat * ||z - z_hat||_2 (the encoder loss), with
  w_adv = 1, w_con = 50, w_lat = 1. Discriminator: real vs fake, BCE on logits.
* Anomaly score: ||z - z_hat||_2, the mean squared distance between the two latents. It is Eq. 5
  with lambda = 0 (the ``ganomaly`` presets set ``eval.score_lambda: 0``); a lambda > 0 blends in
  the reconstruction error R.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AdversarialAnomalyModel
from .blocks import DCGANDecoder, DCGANDiscriminator, DCGANEncoder, init_weights
from .objective import (
    LossWeights,
    ScoreOutput,
    TrainingLosses,
    contextual_loss,
    discriminator_loss,
    latent_loss,
    latent_score,
    reconstruction_score,
    score_output,
    weighted_losses,
)


class GANomalyGenerator(nn.Module):
    """x -> (x_hat, z, z_hat): encoder G_E, decoder G_D, re-encoder E (GANomaly's Fig. 2)."""

    def __init__(self, image_size: int, channels: int, ngf: int, nz: int):
        super().__init__()
        self.encoder = DCGANEncoder(image_size, channels, ngf, nz)
        self.decoder = DCGANDecoder(image_size, channels, ngf, nz)
        self.reencoder = DCGANEncoder(image_size, channels, ngf, nz)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        x_hat = self.decoder(z)
        return x_hat, z, self.reencoder(x_hat)


class GANomaly(AdversarialAnomalyModel):
    """GANomaly's generator and discriminator with its losses and its latent anomaly score."""

    name = "ganomaly"

    def __init__(self, image_size: int = 32, channels: int = 3, ngf: int = 64, ndf: int = 64, nz: int = 100):
        super().__init__()
        self.args = {"image_size": image_size, "channels": channels, "ngf": ngf, "ndf": ndf, "nz": nz}
        self.generator = GANomalyGenerator(image_size, channels, ngf, nz)
        self.discriminator = DCGANDiscriminator(image_size, channels, ndf)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``: x_hat = G_D(G_E(x))."""
        return self.generator(x)[0]

    def training_losses(
        self, x: torch.Tensor, weights: LossWeights, input_noise_std: float = 0.0
    ) -> TrainingLosses:
        """Losses of one training step on a batch of normal images ``x``.

        Generator: w_adv * L_adv + w_con * L_con + w_enc * L_enc (GANomaly's Eq. 4, the encoder
        weight being ``weights.latent``), L_adv the feature-matching loss on D's features.
        Discriminator: BCE of real vs fake (the official code halves it; Adam is scale-invariant).
        """
        generator_input = x
        if input_noise_std > 0:
            generator_input = x + input_noise_std * torch.randn_like(x)
        x_hat, z, z_hat = self.generator(generator_input)
        logit_real, features_real = self.discriminator(x)
        logit_fake, features_fake = self.discriminator(x_hat)

        adversarial = latent_loss(features_real.detach(), features_fake)
        contextual = contextual_loss(x, x_hat)
        encoder = latent_loss(z, z_hat)
        discriminator = discriminator_loss(logit_real, logit_fake)
        return weighted_losses(weights, adversarial, contextual, encoder, discriminator, latent_name="enc")

    def score(self, x: torch.Tensor, score_lambda: float = 0.0, details: bool = False) -> ScoreOutput:
        """lambda * R + (1 - lambda) * ||z - z_hat||_2 per image; GANomaly's own score is lambda = 0.

        With ``details``, also returns the anomaly map |x - x_hat|, x_hat and the latent z.
        """
        x_hat, z, z_hat = self.generator(x)
        reconstruction = reconstruction_score(x, x_hat)
        latent = latent_score(z, z_hat)
        return score_output(
            x, x_hat, reconstruction, latent, score_lambda, details=details, features=z.flatten(1)
        )

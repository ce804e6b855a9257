"""EGBAD, "Efficient GAN-based anomaly detection" (Zenati et al., 2018), a baseline of Table I.

A BiGAN (Donahue et al., ICLR 2017) trained on normal images: an encoder E (x -> z), a generator
G (z -> x) and a discriminator D on joint pairs, real (x, E(x)) against fake (G(z), z) with
z ~ N(0, I). E and G learn together to fool D, so that E inverts G without ever being trained to
reconstruct. The encoder and generator are the shared DCGAN blocks; :class:`JointDiscriminator`
is EGBAD's own.

Anomaly score (Zenati et al.): A(x) = alpha * ||x - G(E(x))||_1 + (1 - alpha) *
||f_D(x, E(x)) - f_D(G(E(x)), E(x))||_1, alpha = 0.9, f_D the discriminator's last hidden layer.
This is Eq. 5 of Skip-GANomaly with lambda = alpha (``eval.score_lambda``), both norms averaged
over their elements.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AdversarialAnomalyModel
from .blocks import DCGANDecoder, DCGANEncoder, dcgan_trunk_layers, init_weights
from .objective import (
    LossWeights,
    ScoreOutput,
    TrainingLosses,
    bigan_generator_loss,
    discriminator_loss,
    feature_matching_score,
    reconstruction_score,
    score_output,
)


class JointDiscriminator(nn.Module):
    """D(x, z) of a BiGAN, laid out as Zenati et al.'s: an image branch (here the DCGAN trunk down
    to 4x4), a latent branch (one dense layer, 8 ndf units), and a joint dense layer (16 ndf units)
    over both, whose output f_D is the feature-matching layer, then one logit. LeakyReLU(0.2) and
    dropout (p = 0.5, as in their code) on the dense layers.
    """

    def __init__(self, image_size: int, channels: int, ndf: int, nz: int, dropout: float = 0.5):
        super().__init__()
        layers, width = dcgan_trunk_layers(image_size, channels, ndf)
        self.image_branch = nn.Sequential(*layers, nn.Flatten())
        self.latent_branch = nn.Sequential(
            nn.Flatten(), nn.Linear(nz, 8 * ndf), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)
        )
        self.joint = nn.Sequential(
            nn.Linear(width * 16 + 8 * ndf, 16 * ndf), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)
        )
        self.classifier = nn.Linear(16 * ndf, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logit, features)`` of shapes (N,) and (N, 16 ndf) for images x and latents z."""
        features = self.joint(torch.cat([self.image_branch(x), self.latent_branch(z)], 1))
        return self.classifier(features).flatten(), features


class EGBAD(AdversarialAnomalyModel):
    """EGBAD's encoder, generator and joint discriminator with the BiGAN losses and its score."""

    name = "egbad"

    def __init__(self, image_size: int = 32, channels: int = 3, ngf: int = 64, ndf: int = 64, nz: int = 100):
        super().__init__()
        self.args = {"image_size": image_size, "channels": channels, "ngf": ngf, "ndf": ndf, "nz": nz}
        self.nz = nz
        self.encoder = DCGANEncoder(image_size, channels, ngf, nz)
        self.generator = DCGANDecoder(image_size, channels, ngf, nz)
        self.discriminator = JointDiscriminator(image_size, channels, ndf, nz)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``: G(E(x))."""
        return self.generator(self.encoder(x))

    def training_losses(
        self, x: torch.Tensor, weights: LossWeights, input_noise_std: float = 0.0
    ) -> TrainingLosses:
        """BiGAN losses of one step: D tells (x, E(x)) from (G(z), z); E and G (the ``generator``
        group) minimise the flipped BCE. Only ``weights.adversarial`` applies (the config keeps
        w_con and w_lat at 0 for this model). ``input_noise_std`` perturbs the encoder's input."""
        encoder_input = x
        if input_noise_std > 0:
            encoder_input = x + input_noise_std * torch.randn_like(x)
        z_real = self.encoder(encoder_input)
        z_fake = torch.randn(len(x), self.nz, 1, 1, device=x.device, dtype=z_real.dtype)
        x_fake = self.generator(z_fake)
        logit_real, _ = self.discriminator(x, z_real)
        logit_fake, _ = self.discriminator(x_fake, z_fake)

        adversarial = bigan_generator_loss(logit_real, logit_fake)
        generator = weights.adversarial * adversarial
        discriminator = discriminator_loss(logit_real, logit_fake)
        parts = {"g_adv": adversarial.detach(), "g": generator.detach(), "d": discriminator.detach()}
        return TrainingLosses(generator=generator, discriminator=discriminator, parts=parts)

    def score(self, x: torch.Tensor, score_lambda: float = 0.9, details: bool = False) -> ScoreOutput:
        """A = alpha * R + (1 - alpha) * F per image (alpha = ``score_lambda``): R the mean absolute
        error of G(E(x)), F the mean absolute difference of f_D(x, E(x)) and f_D(G(E(x)), E(x)).

        With ``details``, also returns the anomaly map |x - G(E(x))|, G(E(x)) and E(x).
        """
        z = self.encoder(x)
        x_hat = self.generator(z)
        if self.discriminator.training:
            _, features_real = self.discriminator(x, z)
            _, features_fake = self.discriminator(x_hat, z)
        else:  # per-image layers in eval mode: one pass over both pairs equals two
            _, features = self.discriminator(torch.cat([x, x_hat]), torch.cat([z, z]))
            features_real, features_fake = features.chunk(2)
        reconstruction = reconstruction_score(x, x_hat)
        latent = feature_matching_score(features_real, features_fake)
        return score_output(
            x, x_hat, reconstruction, latent, score_lambda, details=details, features=z.flatten(1)
        )

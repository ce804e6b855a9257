"""AnoGAN (Schlegl et al., IPMI 2017), a baseline of Table I.

Training is a plain DCGAN on normal images: a generator G (z -> x, the shared DCGAN decoder) and
the shared DCGAN discriminator, whose 4x4 feature map is f(.).

Scoring has no encoder, so each image x is mapped back to the latent space by search: starting
from z_0, z is moved by Adam for ``latent_search_steps`` steps to minimise

    L(z) = (1 - lambda_A) * R(z) + lambda_A * D(z),   R(z) = |x - G(z)|,   D(z) = |f(x) - f(G(z))|

(residual and discrimination losses, both L1, averaged over their elements instead of summed),
and the anomaly score is L at the final z, lambda_A = 0.1. In this package's Eq. 5 convention
(lambda weighting the image-space term) that is ``eval.score_lambda`` = 1 - lambda_A = 0.9.

The whole batch of latents is optimised at once. The loss is a sum of per-image terms and Adam
updates each coordinate from its own gradient history, so every image's search is independent of
the others in its batch; every search starts from the same z_0, a fixed draw from N(0, I) stored
with the weights, so a score does not depend on the batch, the order or the random state.
"""

from __future__ import annotations

import torch

from ..specs.models import ANOGAN as SPEC
from .base import AdversarialAnomalyModel
from .blocks import DCGANDecoder, DCGANDiscriminator, init_weights
from .objective import (
    LossWeights,
    ScoreOutput,
    TrainingLosses,
    anomaly_score,
    discriminator_loss,
    feature_matching_score,
    generator_adversarial_loss,
    reconstruction_score,
    score_output,
)

# The latent search's defaults are this model's own config keys, declared with its spec.
DEFAULT_SEARCH_STEPS = SPEC.own_default("latent_search_steps")
DEFAULT_SEARCH_LR = SPEC.own_default("latent_search_lr")


class AnoGAN(AdversarialAnomalyModel):
    """A DCGAN and AnoGAN's per-image latent search at test time."""

    name = "anogan"
    score_needs_grad = True

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        ngf: int = 64,
        ndf: int = 64,
        nz: int = 100,
        latent_search_steps: int = DEFAULT_SEARCH_STEPS,
        latent_search_lr: float = DEFAULT_SEARCH_LR,
    ):
        super().__init__()
        if latent_search_steps < 0 or latent_search_lr <= 0:
            raise ValueError("latent_search_steps must be >= 0 and latent_search_lr > 0")
        self.args = {
            "image_size": image_size,
            "channels": channels,
            "ngf": ngf,
            "ndf": ndf,
            "nz": nz,
            "latent_search_steps": latent_search_steps,
            "latent_search_lr": latent_search_lr,
        }
        self.nz = nz
        self.latent_search_steps = latent_search_steps
        self.latent_search_lr = latent_search_lr
        self.generator = DCGANDecoder(image_size, channels, ngf, nz)
        self.discriminator = DCGANDiscriminator(image_size, channels, ndf)
        start = torch.randn(1, nz, 1, 1, generator=torch.Generator().manual_seed(0))
        self.register_buffer("latent_start", start)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate images from latents: G(z)."""
        return self.generator(z)

    def training_losses(
        self, x: torch.Tensor, weights: LossWeights, input_noise_std: float = 0.0
    ) -> TrainingLosses:
        """DCGAN losses of one step: D tells x from G(z), z ~ N(0, I); G minimises -log D(G(z)).
        Only ``weights.adversarial`` applies; G reads no image, so ``input_noise_std`` must be 0."""
        if input_noise_std > 0:
            raise ValueError("AnoGAN's generator has no image input to add noise to")
        z = torch.randn(len(x), self.nz, 1, 1, device=x.device, dtype=x.dtype)
        x_fake = self.generator(z)
        logit_real, _ = self.discriminator(x)
        logit_fake, _ = self.discriminator(x_fake)
        adversarial = generator_adversarial_loss(logit_fake)
        generator = weights.adversarial * adversarial
        discriminator = discriminator_loss(logit_real, logit_fake)
        parts = {"g_adv": adversarial.detach(), "g": generator.detach(), "d": discriminator.detach()}
        return TrainingLosses(generator=generator, discriminator=discriminator, parts=parts)

    def _search_terms(self, x: torch.Tensor, features_real: torch.Tensor, z: torch.Tensor):
        """(G(z), R(z), D(z)) per image."""
        x_gen = self.generator(z)
        _, features_gen = self.discriminator(x_gen)
        return x_gen, reconstruction_score(x, x_gen), feature_matching_score(features_real, features_gen)

    def search_latent(self, x: torch.Tensor, score_lambda: float = 0.9, steps: int | None = None):
        """The latent z* of each image of ``x`` after ``steps`` Adam steps on L(z) from z_0.

        Gradients reach z only (``autograd.grad``): the networks' ``.grad`` stay untouched. Works
        under ``no_grad`` and ``inference_mode`` callers alike.
        """
        steps = self.latent_search_steps if steps is None else steps
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()
            with torch.no_grad():
                _, features_real = self.discriminator(x)
            z = self.latent_start.expand(len(x), -1, -1, -1).clone().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=self.latent_search_lr)
            for _ in range(steps):
                _, residual, discrimination = self._search_terms(x, features_real, z)
                # A sum of per-image losses: each image's gradient is its own.
                loss = anomaly_score(residual, discrimination, score_lambda).sum()
                (z.grad,) = torch.autograd.grad(loss, z)
                optimizer.step()
        return z.detach()

    def score(self, x: torch.Tensor, score_lambda: float = 0.9, details: bool = False) -> ScoreOutput:
        """L(z*) per image: (1 - lambda_A) * R + lambda_A * D with 1 - lambda_A = ``score_lambda``.

        With ``details``, also returns the anomaly map |x - G(z*)|, G(z*) and z*.
        """
        z = self.search_latent(x, score_lambda)
        with torch.no_grad():
            _, features_real = self.discriminator(x)
            x_gen, reconstruction, latent = self._search_terms(x, features_real, z)
        return score_output(
            x, x_gen, reconstruction, latent, score_lambda, details=details, features=z.flatten(1)
        )

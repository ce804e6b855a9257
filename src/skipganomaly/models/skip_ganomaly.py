"""Skip-GANomaly (Akcay, Atapour-Abarghouei, Breckon, IJCNN 2019), Sec. III-B and Fig. 3.

* :class:`UNetGenerator`: encoder-decoder with skip connections, written as an explicit list of
  encoder maps (``skips.append(h)`` ... ``torch.cat([h, skips.pop()], 1)``).
* :class:`Discriminator`: the DCGAN encoder, whose last convolution gives the features f(.) of
  Eq. 3, followed by a classifier head; returns ``(logit, features)``.
* :class:`SkipGANomaly`: the two networks plus the training losses (Eq. 1-4) and the anomaly score
  (Eq. 5). No I/O; the trainer owns optimisers, checkpoints and logs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..objective import (
    LossWeights,
    ScoreOutput,
    TrainingLosses,
    contextual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    latent_loss,
    latent_score,
    reconstruction_score,
    score_output,
    weighted_losses,
)
from .base import AdversarialAnomalyModel
from .blocks import (
    DCGANEncoder,
    DenseFastConv2d,
    DenseFastConvTranspose2d,
    check_image_size,
    concat_channels,
    init_weights,
)


class UNetGenerator(nn.Module):
    """UNet generator G = (G_E, G_D) for square ``image_size`` x ``image_size`` inputs.

    Encoder: log2(image_size) blocks of Conv 4x4 stride 2 with widths ngf, 2ngf, 4ngf, 8ngf,
    8ngf, ... down to a 1x1 bottleneck; BatchNorm on every block but the first and the 1x1
    bottleneck; LeakyReLU(0.2). Decoder: the mirror image with ConvTranspose 4x4 stride 2,
    BatchNorm and ReLU; each decoder map is concatenated with its mirror encoder map; Tanh output.

    As in the official code (pix2pix's UNet), each block applies its activation first, so the
    maps kept as skips are the encoder's pre-activation outputs and the decoder's ReLU acts on
    the concatenation. A batch of one still works in training mode because the 1x1 bottleneck
    has no BatchNorm.
    """

    def __init__(self, image_size: int = 32, channels: int = 3, ngf: int = 64):
        super().__init__()
        depth = check_image_size(image_size)
        widths = [ngf * min(2**i, 8) for i in range(depth)]

        down: list[nn.Module] = [DenseFastConv2d(channels, widths[0], 4, 2, 1, bias=False)]
        for i in range(1, depth):
            layers: list[nn.Module] = [
                nn.LeakyReLU(0.2, inplace=False),
                DenseFastConv2d(widths[i - 1], widths[i], 4, 2, 1, bias=False),
            ]
            if i < depth - 1:
                layers.append(nn.BatchNorm2d(widths[i]))
            down.append(nn.Sequential(*layers))

        up: list[nn.Module] = []
        for i in range(depth - 1, 0, -1):
            # The innermost block sees the bottleneck alone; the others see [decoder, skip].
            in_width = widths[i] if i == depth - 1 else 2 * widths[i]
            up.append(
                nn.Sequential(
                    nn.ReLU(inplace=False),
                    DenseFastConvTranspose2d(in_width, widths[i - 1], 4, 2, 1, bias=False),
                    nn.BatchNorm2d(widths[i - 1]),
                )
            )
        up.append(
            nn.Sequential(
                nn.ReLU(inplace=False),
                DenseFastConvTranspose2d(2 * widths[0], channels, 4, 2, 1, bias=True),
                nn.Tanh(),
            )
        )
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = self.up[0](skips.pop())  # the 1x1 bottleneck z = G_E(x)
        for block in self.up[1:]:
            h = block(concat_channels(h, skips.pop()))  # torch.cat, with dense gradients
        return h


class Discriminator(nn.Module):
    """DCGAN discriminator that doubles as the feature extractor f(.) of Eq. 3.

    ``features``: Conv 4x4 stride 2 blocks (BatchNorm from the second on, LeakyReLU(0.2)), widths
    doubling from ndf down to 4x4, then a 4x4 convolution to ``nz`` channels at 1x1. The classifier
    maps those nz features to one real/fake logit. (The official code uses a 3x3 padded convolution
    on the 1x1 map, of which only the centre tap ever sees data: a 1x1 convolution is the same
    function without the dead weights.)
    """

    def __init__(self, image_size: int = 32, channels: int = 3, ndf: int = 64, nz: int = 100):
        super().__init__()
        self.features = DCGANEncoder(image_size, channels, ndf, nz)
        self.classifier = DenseFastConv2d(nz, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logit, features)`` of shapes (N,) and (N, nz)."""
        features = self.features(x)
        logit = self.classifier(features).flatten()
        return logit, features.flatten(1)


class SkipGANomaly(AdversarialAnomalyModel):
    """Generator and discriminator of Skip-GANomaly with its losses and its anomaly score."""

    name = "skipganomaly"

    def __init__(self, image_size: int = 32, channels: int = 3, ngf: int = 64, ndf: int = 64, nz: int = 100):
        super().__init__()
        self.args = {"image_size": image_size, "channels": channels, "ngf": ngf, "ndf": ndf, "nz": nz}
        self.generator = UNetGenerator(image_size, channels, ngf)
        self.discriminator = Discriminator(image_size, channels, ndf, nz)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``: x_hat = G(x)."""
        return self.generator(x)

    def networks(self) -> dict[str, nn.Module]:
        """The networks by the names of :meth:`parameter_groups` (what data parallelism wraps)."""
        return {"generator": self.generator, "discriminator": self.discriminator}

    def training_losses(
        self,
        x: torch.Tensor,
        weights: LossWeights,
        input_noise_std: float = 0.0,
        *,
        generator: Callable[[torch.Tensor], torch.Tensor] | None = None,
        discriminator: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> TrainingLosses:
        """Losses of one training step on a batch of normal images ``x``.

        Generator (Eq. 4): w_adv * L_adv + w_con * L_con (Eq. 2) + w_lat * L_lat (Eq. 3).
        Discriminator: the adversarial objective of Eq. 1 only, as the paper states (the official
        code also adds the latent loss here and back-propagates it after G has stepped).

        D runs once on x and once on x_hat (train-mode BatchNorm sees real and fake batches
        apart). The caller back-propagates ``generator`` into G's parameters and
        ``discriminator`` into D's only (``backward(inputs=...)``), before either optimiser
        steps, which gives the same gradients as the official update order while running D twice
        instead of three times.

        ``generator`` and ``discriminator`` stand in for the two networks when they run wrapped
        (``DistributedDataParallel``, which must see each forward call to synchronise gradients).
        """
        generator = generator or self.generator
        discriminator = discriminator or self.discriminator
        generator_input = x
        if input_noise_std > 0:
            generator_input = x + input_noise_std * torch.randn_like(x)
        x_hat = generator(generator_input)
        logit_real, features_real = discriminator(x)
        logit_fake, features_fake = discriminator(x_hat)

        adversarial = generator_adversarial_loss(logit_fake)
        contextual = contextual_loss(x, x_hat)
        latent = latent_loss(features_real.detach(), features_fake)
        discriminator = discriminator_loss(logit_real, logit_fake)
        return weighted_losses(weights, adversarial, contextual, latent, discriminator)

    def score(self, x: torch.Tensor, score_lambda: float = 0.9, details: bool = False) -> ScoreOutput:
        """Anomaly score of Eq. 5 for each image of ``x``; call in eval mode for honest scores.

        With ``details``, also returns the per-pixel anomaly map, the reconstruction and f(x).
        """
        x_hat = self.generator(x)
        if self.discriminator.training:
            # Train-mode BatchNorm (the official code's scoring) normalises each call's batch.
            _, features_real = self.discriminator(x)
            _, features_fake = self.discriminator(x_hat)
        else:
            # Eval-mode BatchNorm is per image, so one pass over [x; x_hat] equals two.
            _, features = self.discriminator(torch.cat([x, x_hat]))
            features_real, features_fake = features.chunk(2)
        reconstruction = reconstruction_score(x, x_hat)
        latent = latent_score(features_real, features_fake)
        return score_output(
            x, x_hat, reconstruction, latent, score_lambda, details=details, features=features_real
        )

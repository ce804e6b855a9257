"""Training losses (Eq. 1-4) and the anomaly score (Eq. 5-6) of Skip-GANomaly, and the terms its
baselines (GANomaly, EGBAD, AnoGAN) add.

Everything here is a pure function of tensors, shared by the models that use the same terms.
Images are in [-1, 1]. Discriminator outputs are logits, so the adversarial terms use
``binary_cross_entropy_with_logits`` (stable where a sigmoid + BCE saturates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """w_adv, w_con, w_lat of Eq. 4."""

    adversarial: float = 1.0
    contextual: float = 50.0
    latent: float = 1.0
    rotation: float = 0.0  # w_rot: D's rotation task (the improved recipe; not in the paper)


@dataclass
class TrainingLosses:
    """One step's losses: ``generator`` and ``discriminator`` are differentiable scalars, each
    to be back-propagated into its own network only; ``parts`` holds detached terms for logs."""

    generator: torch.Tensor
    discriminator: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ScoreOutput:
    """Per-image results of scoring a batch. ``score`` is A of Eq. 5 before any scaling."""

    score: torch.Tensor
    reconstruction: torch.Tensor
    latent: torch.Tensor
    anomaly_map: torch.Tensor | None = None
    reconstructed: torch.Tensor | None = None
    features: torch.Tensor | None = None
    # The raw score terms by name when the model combines several (``model.score_terms``): what a
    # run standardises on its normal validation images (:func:`standardized_score`).
    terms: dict[str, torch.Tensor] | None = None
    # Per-pixel maps (N, H, W) of terms other than R (whose map is ``anomaly_map``), by term name,
    # for the terms that make one; the export names each ``<term>_map`` (deploy.contract).
    maps: dict[str, torch.Tensor] | None = None
    # R at each of ``model.map_pooling``'s candidates (N, C), while validation chooses among them.
    pooled_reconstruction: torch.Tensor | None = None


def weighted_losses(
    weights: LossWeights,
    adversarial: torch.Tensor,
    contextual: torch.Tensor,
    latent: torch.Tensor,
    discriminator: torch.Tensor,
    latent_name: str = "lat",
) -> TrainingLosses:
    """Eq. 4: the generator's loss w_adv L_adv + w_con L_con + w_lat L_lat, with the
    discriminator's loss, and the detached terms for logs (``g_adv``, ``g_con``,
    ``g_<latent_name>``, ``g``, ``d``). Skip-GANomaly's latent term is Eq. 3; GANomaly's is its
    encoder loss (``latent_name="enc"``)."""
    generator = weights.adversarial * adversarial + weights.contextual * contextual + weights.latent * latent
    parts = {
        "g_adv": adversarial.detach(),
        "g_con": contextual.detach(),
        f"g_{latent_name}": latent.detach(),
        "g": generator.detach(),
        "d": discriminator.detach(),
    }
    return TrainingLosses(generator=generator, discriminator=discriminator, parts=parts)


def generator_adversarial_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """The generator's side of Eq. 1 in its non-saturating form: -log D(x_hat)."""
    return F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's side of Eq. 1: -log D(x) - log(1 - D(x_hat))."""
    real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
    fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    return real + fake


def bigan_generator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """The generator-and-encoder side of a BiGAN (Donahue et al., 2017), non-saturating: the
    discriminator's labels flipped, -log D(G(z), z) - log(1 - D(x, E(x))). Used by EGBAD."""
    fake = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
    real = F.binary_cross_entropy_with_logits(logit_real, torch.zeros_like(logit_real))
    return fake + real


def contextual_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean absolute error ||x - x_hat||_1 between the input and its reconstruction."""
    return (x - x_hat).abs().mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss (Lin et al., ICCV 2017) of per-pixel logits against a {0, 1} mask: the
    cross-entropy scaled by (1 - p_t)^gamma, so the many easy normal pixels do not drown the few
    anomalous ones (DRAEM trains its segmentation this way)."""
    logits, target = logits.float(), target.float()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    return ((1 - p_true) ** gamma * cross_entropy).mean()


def latent_loss(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean squared error ||f(x) - f(x_hat)||_2 between discriminator features."""
    return (features_real - features_fake).pow(2).mean()


def reconstruction_score(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """R of Eq. 5 per image: the contextual loss (Eq. 2) averaged over one image's pixels.

    The official code scores with squared error while it trains with L1; we score with the
    same L1 the model was trained on, so R and the per-pixel map agree (R = map.mean()).
    """
    return (x - x_hat).abs().flatten(1).mean(1)


def pooled_reconstruction_score(x: torch.Tensor, x_hat: torch.Tensor, fraction: float = 1.0) -> torch.Tensor:
    """R per image pooled over the anomaly map: the mean of its ``fraction`` highest pixels.

    ``fraction`` 1 is the mean over the whole image, :func:`reconstruction_score` (Eq. 2). A small
    defect changes few pixels, and the mean over all of them dilutes it; the mean of the top few
    percent does not.
    """
    if fraction >= 1.0:
        return reconstruction_score(x, x_hat)
    pixels = anomaly_map(x, x_hat).flatten(1)
    # int(): a traced export sees the size as a tensor; the image size is fixed there.
    k = max(1, int(round(fraction * int(pixels.shape[1]))))
    return pixels.topk(k, dim=1).values.mean(1)


def quarter_turns(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` (N, C, H, W; square) turned by ``k`` quarter turns counter-clockwise: the same values
    as ``torch.rot90(x, k, dims=(2, 3))``, written with transposes and flips, which ONNX exports
    (``rot90`` has no ONNX operator)."""
    k %= 4
    if k == 1:
        return x.transpose(2, 3).flip(2)
    if k == 2:
        return x.flip(2).flip(3)
    if k == 3:
        return x.transpose(2, 3).flip(3)
    return x


def rotations(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W; square) turned by ``turns[i]`` quarter turns."""
    out = x.clone()
    for k in (1, 2, 3):
        chosen = turns == k
        if bool(chosen.any()):
            out[chosen] = quarter_turns(x[chosen], k)
    return out


def rotation_loss(logits: torch.Tensor, turns: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting how many quarter turns each image was rotated by: the
    self-supervised task of SS-GAN (Chen et al., CVPR 2019), trained on real images only."""
    return F.cross_entropy(logits, turns, reduction=reduction)


def latent_score(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """L of Eq. 5 per image: the latent loss (Eq. 3) averaged over one image's features."""
    return (features_real - features_fake).pow(2).flatten(1).mean(1)


def feature_matching_score(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute difference between discriminator features: the L1
    feature-matching ("discrimination") loss of AnoGAN (Schlegl et al., 2017) and EGBAD
    (Zenati et al., 2018), averaged over features instead of summed."""
    return (features_real - features_fake).abs().flatten(1).mean(1)


def anomaly_score(reconstruction: torch.Tensor, latent: torch.Tensor, score_lambda: float = 0.9):
    """Eq. 5: A = lambda * R + (1 - lambda) * L, per image.

    Every model scores this way, lambda always weighting the image-space term R: EGBAD's alpha
    and AnoGAN's 1 - lambda are this lambda; GANomaly's score is L alone (lambda = 0).
    """
    return score_lambda * reconstruction + (1.0 - score_lambda) * latent


def anomaly_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-pixel anomaly map |x - x_hat| averaged over channels: (N, C, H, W) -> (N, H, W)."""
    return (x - x_hat).abs().mean(1)


def gaussian_smoothing(maps: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Each map of ``maps`` (N, H, W) convolved with a Gaussian of standard deviation ``sigma``
    pixels (a 0-d tensor, so that an exported graph reads it from the model), truncated at
    ``radius`` pixels (less than the map's side), edges mirrored. A ``sigma`` of 0 returns the maps
    unchanged: the kernel is then one tap of weight 1.

    Why smooth: a restoration error is noisy at the scale of a pixel (texture, edges), a defect
    covers a region; averaging over the region raises its contrast against the noise, which is
    why DRAEM and PatchCore smooth their maps. How much is chosen on validation masks.

    Mirrored, not replicated, edges: replication gives a corner pixel the weight of a whole
    quarter-plane, so a strongly smoothed map peaked in its corners (measured on MVTec 3D-AD tire,
    where the corners differ with the acquisition; docs/normal-only.md)."""
    if radius <= 0:
        return maps
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    spread = sigma.to(torch.float32).clamp(min=1e-3)  # exp(-1 / 2e-6) is exactly 0 in float32
    kernel = torch.exp(-(offsets * offsets) / (2 * spread * spread))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    padded = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(rows, kernel.view(1, 1, -1, 1))[:, 0]


def score_output(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    reconstruction: torch.Tensor,
    latent: torch.Tensor,
    score_lambda: float,
    *,
    details: bool = False,
    features: torch.Tensor | None = None,
) -> ScoreOutput:
    """A model's scores of a batch: A (Eq. 5) from its R and L terms; with ``details`` also the
    anomaly map |x - x_hat|, the reconstruction x_hat and the model's feature vector per image."""
    output = ScoreOutput(
        score=anomaly_score(reconstruction, latent, score_lambda),
        reconstruction=reconstruction,
        latent=latent,
    )
    if details:
        output.anomaly_map = anomaly_map(x, x_hat)
        output.reconstructed = x_hat
        output.features = features
    return output

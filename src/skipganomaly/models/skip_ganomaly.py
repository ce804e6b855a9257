"""Skip-GANomaly (Akcay, Atapour-Abarghouei, Breckon, IJCNN 2019), Sec. III-B and Fig. 3.

* :class:`UNetGenerator`: encoder-decoder with skip connections, written as an explicit list of
  encoder maps (``skips.append(h)`` ... ``torch.cat([h, skips.pop()], 1)``).
* :class:`Discriminator`: the DCGAN encoder, whose last convolution gives the features f(.) of
  Eq. 3, followed by a classifier head; returns ``(logit, features)``.
* :class:`SkipGANomaly`: the two networks plus the training losses (Eq. 1-4) and the anomaly score
  (Eq. 5). No I/O; the trainer owns optimisers, checkpoints and logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..specs.models import SKIPGANOMALY, parse_map_baseline, parse_map_pooling, parse_map_smoothing
from ..specs.score_terms import feature_bank_key, missing_switches, parse_score_terms
from .base import AdversarialAnomalyModel
from .blocks import (
    DCGANEncoder,
    DenseFastConv2d,
    DenseFastConvTranspose2d,
    check_image_size,
    concat_channels,
    init_weights,
)
from .objective import (
    LossWeights,
    ScoreOutput,
    TrainingLosses,
    contextual_loss,
    discriminator_loss,
    focal_loss,
    gaussian_smoothing,
    generator_adversarial_loss,
    latent_loss,
    latent_score,
    pooled_reconstruction_score,
    rotation_loss,
    rotations,
    score_output,
    weighted_losses,
)
from .patch_knn import nearest_patch_distance, patch_feature_width, patch_features, patch_map
from .score_terms import TermInputs, compute_terms, standardized_score


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

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        ndf: int = 64,
        nz: int = 100,
        rotation_head: bool = False,
    ):
        super().__init__()
        self.features = DCGANEncoder(image_size, channels, ndf, nz)
        self.classifier = DenseFastConv2d(nz, 1, 1, bias=False)
        # SS-GAN's auxiliary head (Chen et al., CVPR 2019): how many quarter turns f(x)'s image
        # was rotated by. Part of D (its optimiser, its re-initialisation).
        self.rotation = nn.Linear(nz, 4) if rotation_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logit, features)`` of shapes (N,) and (N, nz)."""
        features = self.features(x)
        logit = self.classifier(features).flatten()
        return logit, features.flatten(1)


class SegmentationHead(nn.Module):
    """DRAEM's discriminative half, light: a two-level UNet on the image and its restoration,
    concatenated, (N, 2C, H, W) -> (N, 1, H, W) logits of "this pixel is anomalous".

    It learns from the synthetic anomalies' masks (``train.corruptions``); at scoring it compares
    x with G(x), so what G removed (a defect) lights up, while what G copies (edges) does not.
    """

    def __init__(self, channels: int, width: int = 32):
        super().__init__()

        def conv(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
            )

        self.level1 = nn.Sequential(conv(2 * channels, width), conv(width, width))
        self.level2 = nn.Sequential(nn.AvgPool2d(2), conv(width, 2 * width))
        self.level3 = nn.Sequential(nn.AvgPool2d(2), conv(2 * width, 2 * width))
        self.up2 = conv(4 * width, width)
        self.up1 = conv(2 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        h1 = self.level1(torch.cat([x, x_hat], 1))
        h2 = self.level2(h1)
        h3 = self.level3(h2)
        h = self.up2(torch.cat([F.interpolate(h3, scale_factor=2.0, mode="nearest"), h2], 1))
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1))
        return self.out(h)


class SkipGANomaly(AdversarialAnomalyModel):
    """Generator and discriminator of Skip-GANomaly with its losses and its anomaly score.

    The faithful model is the first five arguments. The others are the improved recipe's switches
    (docs/accuracy.md), each off by default, so a faithful model and its checkpoints are unchanged:

    * ``rotation_head``: D also predicts the rotation of real images (SS-GAN), trained with
      ``train.w_rot``; its loss on the four rotations of an image is the ``rotation`` score term.
    * ``score_terms``: instead of Eq. 5, the sum of these terms, each standardised on normal
      validation images (:func:`~skipganomaly.models.score_terms.standardized_score`); the statistics are
      buffers the trainer fits (:meth:`set_term_statistics`), so the score of one image needs
      nothing but the model.
    * ``select_terms``: where validation holds labelled anomalies, the trainer keeps the subset of
      ``score_terms`` whose standardised sum has the highest validation AUROC (weights of 1 or 0
      in the ``term_weights`` buffer); without anomalies every term counts.
    * ``map_pooling``: R is the mean of this fraction of the highest anomaly-map pixels (1: Eq. 2);
      several are candidates validation chooses among (:meth:`set_map_pooling`), and scoring then
      also returns R at each of them (``ScoreOutput.pooled_reconstruction``).
    * ``knn_bank``, ``knn_k``: the ``knn`` term is the mean distance from f(x) to its ``knn_k``
      nearest features of ``knn_bank`` normal training images, kept in a buffer the trainer fills
      (:meth:`set_feature_bank`).
    * ``segmentation_head``: a :class:`SegmentationHead` on (x, G(x)), trained on the synthetic
      anomalies' masks; its smoothed peak is the ``segmentation`` term. The anomaly map is then
      a mix of |x - G(x)| and its probability map with weights validation fixes
      (``map_weights``, :meth:`set_map_weights`; the reconstruction error until then).
    * ``map_smoothing``: candidates for the Gaussian smoothing of the maps (a fraction of the
      image side); validation chooses one on the pixel AUROC of its masks
      (:meth:`set_map_smoothing`). The score terms do not change with it.
    * ``map_baseline``: "mean" subtracts the normal validation images' mean map (a buffer validation
      fills, :meth:`set_map_baseline`) from the anomaly map; "none,mean" lets validation choose.
    * ``patch_bank``: rows of the bank of normal training images' region features (D's, at 1/4
      and 1/8 of the side; :mod:`.patch_knn`) that the ``patch`` term and map measure against,
      a buffer the trainer fills (:meth:`set_patch_bank`); validation may choose its map.
    """

    name = "skipganomaly"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        ngf: int = 64,
        ndf: int = 64,
        nz: int = 100,
        rotation_head: bool = False,
        score_terms: str = "",
        map_pooling: str = "1",
        knn_bank: int = 4096,
        knn_k: int = 5,
        select_terms: bool = True,
        segmentation_head: bool = False,
        map_smoothing: str = "0",
        map_baseline: str = "none",
        patch_bank: int = 16384,
    ):
        super().__init__()
        self.args = {"image_size": image_size, "channels": channels, "ngf": ngf, "ndf": ndf, "nz": nz}
        improved = {
            "rotation_head": rotation_head,
            "score_terms": score_terms,
            "map_pooling": map_pooling,
            "knn_bank": knn_bank,
            "knn_k": knn_k,
            "select_terms": select_terms,
            "segmentation_head": segmentation_head,
            "map_smoothing": map_smoothing,
            "map_baseline": map_baseline,
            "patch_bank": patch_bank,
        }
        # Only the values off their default (the spec's, which the signature repeats: tested) are
        # stored, so a faithful model's arguments and checkpoints stay as they were.
        defaults = {key.name: key.default for key in SKIPGANOMALY.own_keys}
        self.args.update({k: v for k, v in improved.items() if v != defaults[k]})
        # 1.0 (a float, as older configurations and checkpoints give it) is the default "1".
        if parse_map_pooling(map_pooling) == (1.0,):
            self.args.pop("map_pooling", None)
        self.score_terms = parse_score_terms(score_terms)
        for term, switch in missing_switches(self.score_terms, SimpleNamespace(**improved)):
            raise ValueError(f"the {term} score term needs model.{switch}")
        # R's pooling: a plain number, or with candidates the first until validation chooses
        # (set_map_pooling), as a buffer so that the checkpoint keeps the choice.
        self.map_pooling_candidates = parse_map_pooling(map_pooling)
        if len(self.map_pooling_candidates) > 1:
            self.register_buffer("map_pooling", torch.tensor(self.map_pooling_candidates[0]))
        else:
            self.map_pooling = self.map_pooling_candidates[0]
        self.knn_k = knn_k
        self.select_terms = select_terms
        self.generator = UNetGenerator(image_size, channels, ngf)
        self.discriminator = Discriminator(image_size, channels, ndf, nz, rotation_head)
        init_weights(self)
        # Built after init_weights (PyTorch's own initialisation, not DCGAN's), so that a model
        # without the head draws the same initial weights as before the head existed.
        self.segmentation = SegmentationHead(channels) if segmentation_head else None
        if self.segmentation is not None:  # [reconstruction error, segmentation] in the map
            self.register_buffer("map_weights", torch.tensor([1.0, 0.0]))
        # The maps' Gaussian smoothing (a fraction of the image side): the first candidate until
        # validation chooses (set_map_smoothing). Without candidates no buffer, as before.
        self.map_smoothing_candidates = parse_map_smoothing(map_smoothing)
        self.map_radius = 0
        if any(self.map_smoothing_candidates):
            self.register_buffer("map_smoothing", torch.tensor(self.map_smoothing_candidates[0]))
            self.map_radius = min(
                image_size - 1, math.ceil(3 * max(self.map_smoothing_candidates) * image_size)
            )
        # The map's per-position baseline: zero (and off) until validation fills it.
        self.map_baseline_candidates = parse_map_baseline(map_baseline)
        if "mean" in self.map_baseline_candidates:
            self.register_buffer("map_baseline", torch.zeros(image_size, image_size))
            self.register_buffer("map_baseline_on", torch.tensor(0.0))
        if self.score_terms:
            n = len(self.score_terms)
            self.register_buffer("term_mean", torch.zeros(n))
            self.register_buffer("term_std", torch.ones(n))
            self.register_buffer("term_weights", torch.ones(n))
        bank_key = feature_bank_key(self.score_terms)
        if bank_key is not None:  # normal training features, filled by the trainer (set_feature_bank)
            self.register_buffer("feature_bank", torch.zeros(improved[bank_key], nz))
        if "patch" in self.score_terms:  # normal region features (set_patch_bank), map off till chosen
            width = patch_feature_width(image_size, ndf)
            self.register_buffer("patch_bank", torch.zeros(patch_bank, width))
            self.register_buffer("patch_centre", torch.zeros(width))
            self.register_buffer("patch_map_on", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``: x_hat = G(x)."""
        return self.generator(x)

    def networks(self) -> dict[str, nn.Module]:
        """The networks by the names of :meth:`parameter_groups` (what data parallelism wraps);
        the segmentation head trains with the generator's optimiser."""
        networks = {"generator": self.generator, "discriminator": self.discriminator}
        if self.segmentation is not None:
            networks["segmentation"] = self.segmentation
        return networks

    def training_losses(
        self,
        x: torch.Tensor,
        weights: LossWeights,
        input_noise_std: float = 0.0,
        *,
        generator: Callable[[torch.Tensor], torch.Tensor] | None = None,
        discriminator: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        segmentation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        corrupted: tuple[torch.Tensor, torch.Tensor] | None = None,
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

        ``corrupted``: ``(x~, mask)``, the batch with synthetic anomalies
        (:func:`skipganomaly.data.corruptions.corrupt`). G then restores: it reads x~ and Eq. 2
        compares its output with the clean x, ||x - G(x~)||_1, so the skips cannot carry a
        defect through; the segmentation head learns ``mask`` from (x~, G(x~)) with a focal loss
        (its input detached: it does not steer G).
        """
        generator = generator or self.generator
        discriminator = discriminator or self.discriminator
        generator_input = x if corrupted is None else corrupted[0]
        if input_noise_std > 0:
            generator_input = x + input_noise_std * torch.randn_like(x)
        x_hat = generator(generator_input)
        logit_real, features_real = discriminator(x)
        logit_fake, features_fake = discriminator(x_hat)

        adversarial = generator_adversarial_loss(logit_fake)
        contextual = contextual_loss(x, x_hat)
        latent = latent_loss(features_real.detach(), features_fake)
        d_loss = discriminator_loss(logit_real, logit_fake)
        rotation = None
        if self.discriminator.rotation is not None and weights.rotation > 0:
            # One random quarter turn per real image, through D (or its DDP wrapper) once more.
            turns = torch.randint(4, (x.shape[0],), device=x.device)
            _, features_turned = discriminator(rotations(x, turns))
            rotation = rotation_loss(self.discriminator.rotation(features_turned), turns)
            d_loss = d_loss + weights.rotation * rotation
        losses = weighted_losses(weights, adversarial, contextual, latent, d_loss)
        if rotation is not None:
            losses.parts["d_rot"] = rotation.detach()
        if self.segmentation is not None and corrupted is not None:
            segmentation = segmentation or self.segmentation
            logits = segmentation(generator_input, x_hat.detach())
            seg = focal_loss(logits, corrupted[1])
            losses.generator = losses.generator + seg
            losses.parts["g_seg"] = seg.detach()
        return losses

    # ------------------------------------------------------------------ the improved score
    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), the discriminator features the knn term compares (Eq. 3's features)."""
        return self.discriminator(x)[1]

    @torch.no_grad()
    def patch_features_of(self, x: torch.Tensor) -> torch.Tensor:
        """D's region features of ``x`` (N, C, H/4, W/4), what the patch term compares."""
        return patch_features(self.discriminator.features.layers, x)

    @torch.no_grad()
    def set_patch_bank(self, rows: torch.Tensor) -> None:
        """Keep ``rows`` (region features of normal training images) for the patch term."""
        self.patch_centre.copy_(rows.mean(0))
        self.patch_bank.copy_(rows - self.patch_centre)

    def set_patch_map(self, on: bool) -> None:
        """Make the anomaly map the patch distances' (True) or the mix of the others (False)."""
        self.patch_map_on.fill_(float(on))

    def set_feature_bank(self, features: torch.Tensor) -> None:
        """Keep ``features`` (f(x) of normal training images, (knn_bank, nz)) for the knn term."""
        if features.shape != self.feature_bank.shape:
            raise ValueError(
                f"feature bank of shape {tuple(features.shape)}, expected {tuple(self.feature_bank.shape)}"
            )
        self.feature_bank.copy_(features)

    @torch.no_grad()
    def set_map_weights(self, weights: torch.Tensor) -> None:
        """How the anomaly map mixes |x - G(x)| and the segmentation head's map (two weights)."""
        self.map_weights.copy_(weights)

    @torch.no_grad()
    def set_term_statistics(
        self, mean: torch.Tensor, std: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        """Fix the standardisation of the score terms (mean and std over normal validation images)
        and, when given, which terms the score sums (``weights``, 1 or 0 per term)."""
        self.term_mean.copy_(mean)
        self.term_std.copy_(torch.clamp(std, min=1e-8))
        if weights is not None:
            self.term_weights.copy_(weights)

    @torch.no_grad()
    def set_map_smoothing(self, fraction: float) -> None:
        """Fix the maps' smoothing (one of ``model.map_smoothing``'s candidates)."""
        self.map_smoothing.fill_(fraction)

    def set_map_pooling(self, fraction: float) -> None:
        """Fix R's pooling (one of ``model.map_pooling``'s candidates)."""
        self.map_pooling.fill_(fraction)

    def set_map_baseline(self, mean_map: torch.Tensor | None) -> None:
        """Subtract ``mean_map`` (H, W) from every anomaly map from now on; None: subtract nothing."""
        self.map_baseline.copy_(torch.zeros_like(self.map_baseline) if mean_map is None else mean_map)
        self.map_baseline_on.fill_(0.0 if mean_map is None else 1.0)

    def pooling_fraction(self) -> float:
        """R's pooling as the candidate given (the buffer holds it in float32)."""
        held = float(self.map_pooling)
        return min(self.map_pooling_candidates, key=lambda candidate: abs(candidate - held))

    def smooth_map(self, maps: torch.Tensor, fraction: float | None = None) -> torch.Tensor:
        """``maps`` (N, H, W) smoothed as validation chose, or at ``fraction`` of the side (one of
        the candidates, while validation compares them); unchanged without candidates."""
        if not self.map_radius:
            return maps
        spread = self.map_smoothing if fraction is None else torch.tensor(fraction)
        return gaussian_smoothing(maps, spread * maps.shape[-1], self.map_radius)

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
        candidates, fraction = self.map_pooling_candidates, self.pooling_fraction()
        pooled = None
        if len(candidates) > 1:  # R at every candidate: what validation chooses the pooling on
            pooled = torch.stack([pooled_reconstruction_score(x, x_hat, f) for f in candidates], 1)
            reconstruction = pooled[:, candidates.index(fraction)]
        else:
            reconstruction = pooled_reconstruction_score(x, x_hat, fraction)
        latent = latent_score(features_real, features_fake)
        output = score_output(
            x, x_hat, reconstruction, latent, score_lambda, details=details, features=features_real
        )
        output.pooled_reconstruction = pooled
        if details:
            output.anomaly_map = self.smooth_map(output.anomaly_map)
        patch = None
        if "patch" in self.score_terms:
            patch = nearest_patch_distance(self.patch_features_of(x), self.patch_bank, self.patch_centre)
        segmentation_map = None
        if self.segmentation is not None:
            segmentation_map = torch.sigmoid(self.segmentation(x, x_hat).float())
            if details:  # the run's map is the one validation chose (set_map_weights)
                weights, head_map = self.map_weights, self.smooth_map(segmentation_map[:, 0])
                output.anomaly_map = weights[0] * output.anomaly_map + weights[1] * head_map
                output.maps = {"segmentation": head_map}
        if details and patch is not None:  # the patch map replaces the others where validation chose it
            output.maps = {**(output.maps or {}), "patch": self.smooth_map(patch_map(patch, x.shape[-1]))}
            output.anomaly_map = torch.lerp(output.anomaly_map, output.maps["patch"], self.patch_map_on)
        if details and "mean" in self.map_baseline_candidates:
            output.anomaly_map = output.anomaly_map - self.map_baseline_on * self.map_baseline
        if self.score_terms:
            inputs = TermInputs(
                self, x, x_hat, features_real, features_fake, reconstruction, latent, segmentation_map, patch
            )
            output.terms = compute_terms(self.score_terms, inputs)
            output.score = standardized_score(
                output.terms, self.score_terms, self.term_mean, self.term_std, self.term_weights
            )
        return output

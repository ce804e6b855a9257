"""The improved score's terms, computed: one function per term of
:mod:`skipganomaly.specs.score_terms` (where each term's facts live), and how they combine.

A term reads what one scored batch offers (:class:`TermInputs`): the images, their
reconstructions, D's features of both, R and L, and the model that scores, for what the term keeps
there (the knn term's ``feature_bank`` buffer and ``knn_k``; the rotation term's discriminator and
its rotation head). :func:`compute_terms` computes the terms a model was built with, in their
order; :func:`standardized_score` sums them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..specs.score_terms import SCORE_TERMS
from .objective import quarter_turns


@dataclass
class TermInputs:
    """What one scored batch offers the score terms (every tensor per image, batch first)."""

    model: nn.Module  # the model that scores: its discriminator, buffers and settings
    x: torch.Tensor
    x_hat: torch.Tensor
    features_real: torch.Tensor  # f(x)
    features_fake: torch.Tensor  # f(G(x))
    reconstruction: torch.Tensor  # R (Eq. 2), as the model pools it
    latent: torch.Tensor  # L (Eq. 3)
    # The segmentation head's probability map (N, 1, H, W), when the model has the head.
    segmentation: torch.Tensor | None = None
    # Each region's distance to the normal regions (N, h, w), when the model has the patch term.
    patch: torch.Tensor | None = None


def nearest_neighbour_distance(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Mean Euclidean distance from each row of ``features`` to its ``k`` nearest rows of ``bank``
    (the features of normal training images): distance to the normal data in feature space.

    Written out as ||a||^2 + ||b||^2 - 2 a.b (one matrix product, as every engine computes it
    fastest) but in float64 and about the bank's mean: in float32 that difference of large squares
    cancels to about 1e-3 of the distance, enough for PyTorch and an ONNX export to disagree on a
    verdict; centred float64 leaves differences of about 1e-12 (the result is float32)."""
    bank = bank.double()
    centre = bank.mean(0)
    a = features.double() - centre
    b = bank - centre
    squared = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2.0 * (a @ b.T)
    distances = squared.clamp_min(0.0).sqrt()
    k = min(k, bank.shape[0])
    return distances.topk(k, dim=1, largest=False).values.mean(1).float()


def segmentation_peak(probabilities: torch.Tensor) -> torch.Tensor:
    """The image's segmentation term: the highest 3x3 mean of the head's anomaly probabilities
    (DRAEM's image score), so one confident pixel alone does not make an anomaly."""
    smoothed = F.avg_pool2d(probabilities, 3, stride=1, padding=1, count_include_pad=False)
    return smoothed.flatten(1).amax(1)


def standardized_score(
    terms: dict[str, torch.Tensor],
    names: tuple[str, ...],
    mean: torch.Tensor,
    std: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The improved score: the sum over ``names`` of each term standardised by the mean and
    standard deviation of that term over normal validation images, so that terms on different
    scales (pixel errors, feature distances, a cross-entropy) weigh the same; ``weights`` (1 or 0
    per term, chosen on validation) leave terms out. With mean 0, std 1 and no weights (not yet
    fitted) it is the plain sum."""
    total = torch.zeros_like(terms[names[0]], dtype=torch.float32)
    for i, name in enumerate(names):
        term = (terms[name].float() - mean[i]) / std[i]
        total = total + (term if weights is None else weights[i] * term)
    return total


def rotation_cross_entropy(discriminator: nn.Module, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """D's rotation head's cross-entropy averaged over the four quarter turns of each image
    (``features``: f(x) of the unturned images, which the score has already computed).

    Written as logsumexp minus the true turn's logit (no per-batch target tensors), so that an
    ONNX export keeps the batch dimension dynamic."""
    head = discriminator.rotation
    total = None
    for k in range(4):
        logits = head(features if k == 0 else discriminator(quarter_turns(x, k))[1])
        term = torch.logsumexp(logits, dim=1) - logits[:, k]
        total = term if total is None else total + term
    return total / 4


TERM_FUNCTIONS: dict[str, Callable[[TermInputs], torch.Tensor]] = {
    "reconstruction": lambda inputs: inputs.reconstruction,
    "latent": lambda inputs: inputs.latent,
    "knn": lambda inputs: nearest_neighbour_distance(
        inputs.features_real, inputs.model.feature_bank, inputs.model.knn_k
    ),
    "rotation": lambda inputs: rotation_cross_entropy(
        inputs.model.discriminator, inputs.x, inputs.features_real
    ),
    "segmentation": lambda inputs: segmentation_peak(inputs.segmentation),
    "patch": lambda inputs: inputs.patch.flatten(1).amax(1),
}
if tuple(TERM_FUNCTIONS) != SCORE_TERMS:  # one function per spec, in the specs' order
    raise ImportError(f"score terms computed {tuple(TERM_FUNCTIONS)} differ from the specs {SCORE_TERMS}")


def compute_terms(names: tuple[str, ...], inputs: TermInputs) -> dict[str, torch.Tensor]:
    """The raw terms ``names`` of one batch, by name, in that order."""
    return {name: TERM_FUNCTIONS[name](inputs) for name in names}

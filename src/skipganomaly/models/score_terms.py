"""The improved score's terms, computed (their facts: :mod:`skipganomaly.specs.score_terms`)."""

from __future__ import annotations

import torch


def nearest_neighbour_distance(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Mean Euclidean distance from each row of ``features`` to its ``k`` nearest rows of ``bank``
    (the features of normal training images): distance to the normal data in feature space."""
    distances = torch.cdist(features.float(), bank.float())
    k = min(k, bank.shape[0])
    return distances.topk(k, dim=1, largest=False).values.mean(1)


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

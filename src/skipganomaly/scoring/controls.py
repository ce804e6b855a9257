"""Learned controls: detectors so simple that a model must beat them to mean anything.

The pixel kNN scores an image by the mean Euclidean distance of its raw pixels (at the model's
size, downsampled to at most :data:`CONTROL_SIZE` px a side) to its ``k`` nearest normal training
images. It learns nothing but a memory of the normal images. Where it separates as well as the
model, the model's figure says little about what the model learnt (``metrics.json``'s
``controls`` and ``margins``; docs/protocols.md). The trivial one-line image statistics are
:mod:`skipganomaly.scoring.shortcuts`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.base import ImageSet
from ..data.loading import iterate_batches

CONTROL_SIZE = 32  # pixels a side; larger images are area-averaged down to this
CONTROL_BANK = 2048  # normal training images kept, drawn from the seed
CONTROL_K = 5
NOTE = (
    "learned controls: the pixel kNN scores an image by the mean distance of its raw pixels (at most "
    f"{CONTROL_SIZE} px a side) to its {CONTROL_K} nearest of up to {CONTROL_BANK} normal training images"
)


def _pixels(
    image_set: ImageSet, image_size: int, channels: int, skip_bad: bool
) -> tuple[np.ndarray, torch.Tensor]:
    """(positions read, (N, D) float32 pixel vectors in [0, 1] at the control's size)."""
    size = min(image_size, CONTROL_SIZE)
    positions, rows = [], []
    for batch in iterate_batches(image_set, 256, image_size=image_size, channels=channels, skip_bad=skip_bad):
        x = batch.images.float() / 255.0
        if size != image_size:
            x = F.adaptive_avg_pool2d(x, size)
        rows.append(x.flatten(1))
        positions.append(batch.indices.numpy())
    if not rows:
        return np.zeros(0, np.int64), torch.zeros(0, size * size * channels)
    return np.concatenate(positions), torch.cat(rows)


def pixel_knn_scores(
    train: ImageSet,
    query: ImageSet,
    *,
    image_size: int,
    channels: int,
    seed: int = 0,
    k: int = CONTROL_K,
    bank: int = CONTROL_BANK,
    skip_bad: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``query``, pixel-kNN score of each): the mean distance to the ``k`` nearest
    of up to ``bank`` normal training images (drawn from ``seed``), in float64."""
    pick = np.sort(np.random.default_rng(seed).choice(len(train), min(bank, len(train)), replace=False))
    _, memory = _pixels(train.subset(pick), image_size, channels, skip_bad)
    positions, rows = _pixels(query, image_size, channels, skip_bad)
    memory64, scores = memory.double(), []
    for start in range(0, len(rows), 512):
        distances = torch.cdist(rows[start : start + 512].double(), memory64)
        scores.append(distances.topk(min(k, len(memory64)), dim=1, largest=False).values.mean(1))
    return positions, (torch.cat(scores).numpy() if scores else np.zeros(0))

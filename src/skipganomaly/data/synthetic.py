"""The synthetic validation set: held-out normal validation images damaged by a family of
synthetic anomalies that training never uses (``eval.synthetic_family``), with their pixel masks.

Under the ``normal-only`` protocol validation holds no labelled anomaly, so nothing could choose
the epoch, the score's terms or the map. These anomalies stand in: the run is chosen on how well
it separates them from the normal validation images. Because training never sees their kind, a
high figure says that the detector finds damage it was not taught, not that it learnt the
corruption (docs/protocols.md). The set is made once per run, from the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..specs.corruptions import CORRUPTION_SPECS, parse_corruptions
from .base import ImageSet
from .corruptions import CORRUPTION_FUNCTIONS, regional_blobs
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .loading import iterate_batches, to_model_input

MAX_COPIES = 4


@dataclass
class SyntheticAnomalies:
    """Damaged copies of normal images (labels 1, in memory at the model's size; ids name the
    family and the normal image), their masks (N, H, W) bool, the families used, and whether each
    damage is a region (N,) bool: a blob drawn at image scale, or a family without blobs, which
    scales with the image (``train.blob_scale``; :func:`~.corruptions.regional_blobs`)."""

    images: ImageSet
    masks: np.ndarray
    families: tuple[str, ...]
    regional: np.ndarray

    def family_of(self, indices: np.ndarray) -> np.ndarray:
        """The family that damaged each of the anomalies ``indices`` (its id's second field)."""
        return np.array([self.images.ids[i].split(":")[1] for i in indices])

    def map_choosers(self, map_blobs: str = "all") -> np.ndarray:
        """The indices of the anomalies the map is chosen on: the local ones (a whole-image
        damage has no pixel to localise), and with ``map_blobs="regions"``
        (``eval.synthetic_map_blobs``) only those whose damage is a region."""
        local = self.masks.mean((1, 2)) < 0.5
        if map_blobs == "regions":
            local &= self.regional
        return np.flatnonzero(local)


def synthetic_anomalies(
    normal: ImageSet,
    families: tuple[str, ...],
    count: int,
    seed: int,
    *,
    image_size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    scale: str = "pixels",
) -> SyntheticAnomalies:
    """Up to ``count`` images of ``normal`` (drawn from ``seed``), each damaged by one of
    ``families`` in turn (quantised back to uint8, as a real image would be), with the mask of
    the damage, blobs at ``scale`` (``train.blob_scale``). A small validation set (a factory's
    few dozen held-out images) gives each image up to :data:`MAX_COPIES` differently damaged
    copies, so the figure rests on more anomalies."""
    rng = np.random.default_rng(seed)
    total = min(count, MAX_COPIES * len(normal))
    pick = np.sort(np.resize(rng.permutation(len(normal)), total))
    chosen = normal.subset(pick)
    generator = torch.Generator().manual_seed(seed)
    images, masks, ids, regional = [], [], [], []
    for batch in iterate_batches(
        chosen, 128, image_size=image_size, channels=channels, max_pixels=max_pixels, skip_bad=True
    ):
        x = to_model_input(batch.images)
        damaged, mask = x.clone(), torch.zeros(x.shape[0], 1, *x.shape[2:])
        region = np.ones(x.shape[0], dtype=bool)
        turn = (batch.indices % len(families)).numpy()
        for k, family in enumerate(families):
            rows = torch.from_numpy(np.flatnonzero(turn == k))
            if len(rows):
                damaged[rows], mask[rows] = CORRUPTION_FUNCTIONS[family](x[rows], generator, scale)
                if CORRUPTION_SPECS[family].blobs:  # as the family's one smooth_blobs call drew them
                    region[rows.numpy()] = regional_blobs(len(rows), scale).numpy()
        regional.append(region)
        as_uint8 = ((damaged + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        images.append(as_uint8.permute(0, 2, 3, 1).numpy())
        masks.append(mask[:, 0].numpy() > 0.5)
        for i in batch.indices.tolist():
            family = families[i % len(families)]
            ids.append(f"synthetic:{family}:{chosen.ids[i] if chosen.ids else pick[i]}:{i}")
    stacked = np.concatenate(images)
    return SyntheticAnomalies(
        images=ImageSet(
            class_ids=np.full(len(stacked), -1),
            images=stacked,
            labels=np.ones(len(stacked), dtype=np.int64),
            ids=ids,
        ),
        masks=np.concatenate(masks),
        families=families,
        regional=np.concatenate(regional),
    )


def normal_images(images: ImageSet) -> ImageSet:
    """The images labelled normal (all of them where the set is unlabelled, as under
    ``normal-only``): what the synthetic validation damages and the map's baseline averages."""
    if images.labels is None:
        return images
    return images.subset(np.flatnonzero(images.labels == 0))


def run_synthetic_anomalies(config, splits) -> SyntheticAnomalies:
    """A run's synthetic validation anomalies, as its validation builds them: its normal
    validation images damaged by ``eval.synthetic_family`` (blobs at ``train.blob_scale``),
    ``eval.synthetic_images`` of them, drawn from ``train.seed`` (a benchmark reading a finished
    run rebuilds the same set)."""
    e = config.eval
    return synthetic_anomalies(
        normal_images(splits.val), parse_corruptions(e.synthetic_family), e.synthetic_images,
        config.train.seed, image_size=config.data.image_size, channels=splits.channels,
        max_pixels=config.data.max_image_pixels, scale=config.train.blob_scale,
    )  # fmt: skip

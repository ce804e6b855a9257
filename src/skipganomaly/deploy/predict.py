"""Scoring new images with a trained run: one image at a time or whole folders, streamed.

Every image is scored alone in effect: networks in eval mode, and the deployment normalisation
and threshold stored in the checkpoint (fixed at training time on validation images), so a file's
score does not depend on what else is scored with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.arrays import as_image, check_batch_size
from ..data.base import ImageSet
from ..data.images import collect_image_paths, is_image_file
from ..data.loading import BadImageCounter
from ..formats.checkpoint import Checkpoint, load_run_checkpoint
from ..runtime.device import resolve_device
from ..runtime.files import partial_path
from ..runtime.precision import resolve_precision
from ..scoring.engine import ScoredSet, ScoringOptions, score_set, scored_batches

# predict's CSV (no PyTorch there, for the scoring-only install), re-exported here for outside code.
from .predict_csv import (  # noqa: E402,F401
    CSV_COLUMNS,
    plan_outputs,
    predict_to_csv,
    skipped_list_path,
    unique_heatmap_name,
)
from .prediction import Prediction


class Predictor:
    """A trained model ready to score images, rebuilt from one checkpoint file alone."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", max_image_pixels: int | None = None):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        # Files with more pixels are bad images (the run's data.max_image_pixels unless given).
        self.max_image_pixels = max_image_pixels or self.config.data.max_image_pixels
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(self.config.train.precision, self.device)
        self.model = checkpoint.build_model().to(self.device).eval()
        if self.config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalization = checkpoint.normalization
        self.preprocessing = checkpoint.preprocessing
        self.image_size = checkpoint.image_size
        self.channels = checkpoint.channels
        self.epoch = checkpoint.epoch

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        which: str = "best",
        device: str = "auto",
        max_image_pixels: int | None = None,
    ) -> Predictor:
        return cls(load_run_checkpoint(run_dir, which), device, max_image_pixels)

    def _scoring_options(
        self, batch_size: int, details: bool, workers: int, skip_bad: bool
    ) -> ScoringOptions:
        """The run's own options (as validation scored, in eval mode) with this call's."""
        options = ScoringOptions.for_run(self.config, self.channels, self.device, self.amp_dtype)
        return options.replace(
            image_size=self.image_size,
            batch_size=batch_size,
            details=details,
            workers=workers,
            skip_bad=skip_bad,
            max_image_pixels=self.max_image_pixels,
        )

    def _score(self, image_set: ImageSet, batch_size: int, details: bool, workers: int, skip_bad: bool):
        return score_set(self.model, image_set, self._scoring_options(batch_size, details, workers, skip_bad))

    def score_arrays(
        self, images: list[np.ndarray] | list[Image.Image], with_maps: bool = False
    ) -> list[Prediction]:
        """Score in-memory images (PIL images or numpy arrays of any size, checked and converted by
        the rules of :mod:`skipganomaly.data.arrays`, as ``Detector.score`` does)."""
        prepared = [
            self.preprocessing.prepare(as_image(image, f"image {k}", self.max_image_pixels))
            for k, image in enumerate(images)
        ]
        if not prepared:
            return []
        image_set = ImageSet(class_ids=np.zeros(len(prepared), np.int64), images=np.stack(prepared))
        scored = self._score(image_set, max(1, len(prepared)), with_maps, 0, False)
        return self._predictions(scored, [""] * len(prepared))

    def score_paths(
        self,
        paths: list[Path],
        batch_size: int = 64,
        with_maps: bool = False,
        workers: int = 0,
        skip_bad: bool = False,
        counter: BadImageCounter | None = None,
    ) -> Iterator[tuple[list[Prediction], int]]:
        """Score files streamed from disk in one pass; yields (predictions, images skipped) batch
        by batch, as soon as each is scored. One DataLoader serves the whole run, so its
        ``workers`` decode ahead of the model without being restarted, and memory stays bounded
        by the few batches in flight, however many files there are. ``counter``, if given,
        collects the path and reason of each file skipped (``skip_bad``)."""
        batch_size = check_batch_size(batch_size)
        names = [str(p) for p in paths]
        image_set = ImageSet(class_ids=np.zeros(len(names), np.int64), paths=names)
        counter = counter if counter is not None else BadImageCounter()
        reported = 0
        options = self._scoring_options(batch_size, with_maps, workers, skip_bad)
        for batch, out in scored_batches(self.model, image_set, options, counter):
            scored = ScoredSet(
                score=out.score.double().numpy(),
                reconstruction=out.reconstruction.double().numpy(),
                latent=out.latent.double().numpy(),
                labels=batch.labels.numpy(),
                indices=batch.indices.numpy(),
                anomaly_maps=None if out.anomaly_map is None else out.anomaly_map.numpy(),
            )
            predictions = self._predictions(scored, [names[i] for i in scored.indices])
            if batch.sizes is not None:
                for prediction, (width, height) in zip(predictions, batch.sizes.tolist(), strict=True):
                    prediction.size = (width, height)
            yield predictions, counter.skipped - reported
            reported = counter.skipped
        if counter.skipped > reported:  # unreadable files at the very end
            yield [], counter.skipped - reported

    def _predictions(self, scored, paths: list[str]) -> list[Prediction]:
        scaled = self.normalization(scored.score)
        out = []
        for k, path in enumerate(paths):
            out.append(
                Prediction(
                    path=path,
                    score=float(scaled[k]),
                    is_anomalous=bool(scaled[k] >= self.normalization.threshold),
                    raw_score=float(scored.score[k]),
                    reconstruction=float(scored.reconstruction[k]),
                    latent=float(scored.latent[k]),
                    anomaly_map=None
                    if scored.anomaly_maps is None
                    else scored.anomaly_maps[k].astype(np.float32),
                )
            )
        return out


__all__ = [
    "Predictor",
    "Prediction",
    "predict_to_csv",
    "collect_image_paths",
    "is_image_file",
    "partial_path",
    "skipped_list_path",
    "plan_outputs",
]

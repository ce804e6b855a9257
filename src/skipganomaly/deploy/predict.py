"""Scoring new images with a trained run: one image at a time or whole folders, streamed.

Every image is scored alone in effect: networks in eval mode, and the deployment normalisation
and threshold stored in the checkpoint (fixed at training time on validation images), so a file's
score does not depend on what else is scored with it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from ..runtime.files import partial_path, streamed_file, write_error, write_text
from ..runtime.outputs import InputSet, check_replaceable, csv_with_header, refuse_input
from ..runtime.precision import resolve_precision
from ..scoring.engine import ScoredSet, ScoringOptions, score_set, scored_batches
from ..scoring.heatmaps import is_heatmap_file, write_heatmap
from .prediction import Prediction

# Threads encoding heatmap PNGs while the next batch is decoded and scored (PNG encoding releases
# the GIL).
HEATMAP_THREADS = 2

CSV_COLUMNS = ["path", "score", "is_anomalous", "raw_score", "reconstruction", "latent", "heatmap"]


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


def unique_heatmap_name(source: str, used: set[str]) -> str:
    stem = Path(source).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        name = f"{stem}_{n}.png"
        n += 1
    used.add(name)
    return name


def skipped_list_path(output: Path) -> Path:
    """Where ``predict`` names the unreadable images it skipped: ``NAME.skipped.csv`` beside
    ``NAME.csv``."""
    return output.with_name(f"{output.stem}.skipped.csv")


_HEADER = ",".join(CSV_COLUMNS[:3])  # what every predictions CSV starts with
_SKIPPED_HEADER = "path,reason"


def plan_outputs(
    paths: list[Path], output: Path, heatmaps: Path | None, overwrite: bool = False
) -> dict[str, Path]:
    """Check every file ``predict_to_csv`` will write before any work (runtime/outputs.py): none
    is an input; an existing one is this verb's own earlier file of that kind (predictions CSV,
    its ``.partial``, the skipped list, an anomaly map) unless ``overwrite``. Returns each input's
    heatmap path (empty without ``heatmaps``): its stem, numbered past names already taken, so a
    heatmap never lands on an input or on another image's map."""
    inputs = InputSet(paths)
    files = [
        (output, "--output", csv_with_header(_HEADER), "a predictions CSV"),
        (
            partial_path(output),
            "--output",
            csv_with_header(_HEADER, allow_empty=True),
            "a partial predictions CSV",
        ),
        (skipped_list_path(output), "--output", csv_with_header(_SKIPPED_HEADER), "a skipped-images list"),
    ]
    for path, option, own, kind in files:
        refuse_input(path, inputs, option)
        check_replaceable(path, option, own, kind, overwrite)
    if heatmaps is None:
        return {}
    taken = InputSet([*paths, *(path for path, *_ in files)])
    used: set[str] = set()
    names: dict[str, Path] = {}
    for source in paths:
        while True:
            target = heatmaps / unique_heatmap_name(str(source), used)
            if target not in taken:  # an input or one of the CSVs: never a heatmap's name
                break
        check_replaceable(target, "--heatmaps", is_heatmap_file, "an anomaly map", overwrite)
        names[str(source)] = target
    return names


def predict_to_csv(
    predictor: Predictor,
    inputs: list[str],
    output: Path,
    heatmaps: Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    skip_bad: bool = False,
    log=print,
    overwrite: bool = False,
) -> dict:
    """Score files and folders into a CSV. Rows are written batch by batch as they finish into
    ``OUTPUT.partial`` beside ``output``, which replaces ``output`` in one step once every image
    is scored: a run that fails leaves a previous ``output`` as it was, and the finished file
    never has a half-written row. A row is written once its heatmap is on disk; heatmaps of one
    batch are encoded by a few threads while the next batch is decoded and scored. Images skipped
    as unreadable (``skip_bad``) are named in ``NAME.skipped.csv`` (path, reason). Returns counts
    (and ``skipped_files``) for the caller to report. No file it writes replaces an input, or
    an existing file that is not its own earlier output of that kind unless ``overwrite``
    (:func:`plan_outputs`)."""
    paths = collect_image_paths(inputs)
    heatmap_paths = plan_outputs(paths, output, heatmaps, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if heatmaps is not None:
            heatmaps.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(output.parent if heatmaps is None else heatmaps, exc) from None
    counts: dict = {"scored": 0, "anomalous": 0, "skipped": 0}
    bad = BadImageCounter()
    map_high = predictor.normalization.map_high

    def heatmap_job(p: Prediction, target: Path) -> None:
        size = p.size
        if size is None:  # not read from a file by the scorer: ask the file itself
            with Image.open(p.path) as original:
                size = original.size
        write_heatmap(target, p.anomaly_map, map_high, size)

    def write_rows(handle, predictions: list[Prediction], jobs: list) -> None:
        for job in jobs:
            job.result()  # re-raises a failed write
        rows = io.StringIO()
        writer = csv.writer(rows)
        for p in predictions:
            writer.writerow(
                [
                    p.path,
                    f"{p.score:.6f}",
                    int(p.is_anomalous),
                    f"{p.raw_score:.6f}",
                    f"{p.reconstruction:.6f}",
                    f"{p.latent:.6f}",
                    p.heatmap,
                ]
            )
        handle.write(rows.getvalue())  # one batch's whole rows at once
        handle.flush()
        for p in predictions:
            counts["scored"] += 1
            counts["anomalous"] += int(p.is_anomalous)

    pool = ThreadPoolExecutor(max_workers=HEATMAP_THREADS) if heatmaps is not None else None
    pending: tuple[list[Prediction], list] | None = None
    with streamed_file(output) as handle:
        csv.writer(handle).writerow(CSV_COLUMNS)
        try:
            for predictions, skipped in predictor.score_paths(
                paths, batch_size, heatmaps is not None, workers, skip_bad, counter=bad
            ):
                counts["skipped"] += skipped
                if pool is None:
                    write_rows(handle, predictions, [])
                    continue
                jobs = []
                for p in predictions:
                    if p.anomaly_map is not None:
                        target = heatmap_paths[p.path]
                        jobs.append(pool.submit(heatmap_job, p, target))
                        p.heatmap = str(target)
                if pending is not None:
                    write_rows(handle, *pending)
                pending = (predictions, jobs)
            if pending is not None:
                write_rows(handle, *pending)
                pending = None
        except KeyboardInterrupt:
            if pool is not None:
                pool.shutdown(wait=True)
            if pending is not None and all(job.done() and job.exception() is None for job in pending[1]):
                write_rows(handle, *pending)  # keep the batch whose heatmaps are written
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
    counts["skipped_files"] = list(bad.files)
    listed = skipped_list_path(output)
    if bad.files:
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["path", "reason"])
        writer.writerows(bad.files)
        write_text(listed, rows.getvalue())
    elif listed.is_file() and csv_with_header(_SKIPPED_HEADER)(listed):
        listed.unlink()  # a previous run's list: this output has no skipped images
    return counts


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

"""Scoring new images with a trained run: one image at a time or whole folders, streamed.

Every image is scored alone in effect: networks in eval mode, and the deployment normalisation
and threshold stored in the checkpoint (fixed at training time on validation images), so a file's
score does not depend on what else is scored with it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import (
    checkpoint_path,
    config_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    normalization_from_checkpoint,
)
from .data.base import ImageSet
from .data.images import is_image_file, list_image_files, prepare_image
from .errors import UserError
from .evaluate import score_set
from .runtime import resolve_device, resolve_precision

CSV_COLUMNS = ["path", "score", "is_anomalous", "raw_score", "reconstruction", "latent", "heatmap"]


@dataclass
class Prediction:
    path: str
    score: float
    is_anomalous: bool
    raw_score: float
    reconstruction: float
    latent: float
    anomaly_map: np.ndarray | None = None
    heatmap: str = ""


def collect_image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly, and every image file below each folder named (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_image_files(path)
            if not found:
                raise UserError(
                    f"folder {path} holds no image files ({', '.join(('png', 'jpg', 'bmp', 'tif'))}, ...)"
                )
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"{path} does not exist; pass image files or folders of images")
    if not paths:
        raise UserError("no images to score; pass image files or folders")
    return paths


class Predictor:
    """A trained model ready to score images, rebuilt from one checkpoint file alone."""

    def __init__(self, payload: dict, device: str = "auto"):
        self.config = config_from_checkpoint(payload)
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(self.config.train.precision, self.device)
        self.model = model_from_checkpoint(payload).to(self.device).eval()
        if self.config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalization = normalization_from_checkpoint(payload)
        self.image_size = int(payload["model"]["args"]["image_size"])
        self.channels = int(payload["model"]["args"]["channels"])
        self.epoch = int(payload["epoch"])

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, which: str = "best", device: str = "auto") -> Predictor:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(
                f"run folder {run_dir} does not exist; pass the --output folder of a training run"
            )
        return cls(load_checkpoint(checkpoint_path(run_dir, which)), device)

    def _score(self, image_set: ImageSet, batch_size: int, details: bool, workers: int, skip_bad: bool):
        return score_set(
            self.model,
            image_set,
            image_size=self.image_size,
            channels=self.channels,
            batch_size=batch_size,
            device=self.device,
            score_lambda=self.config.eval.score_lambda,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.train.channels_last,
            details=details,
            workers=workers,
            skip_bad=skip_bad,
        )

    def score_arrays(
        self, images: list[np.ndarray] | list[Image.Image], with_maps: bool = False
    ) -> list[Prediction]:
        """Score in-memory images (PIL images or HxW[xC] uint8 arrays) of any size."""
        prepared = []
        for image in images:
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            prepared.append(prepare_image(image, self.image_size, self.channels))
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
    ) -> Iterator[tuple[list[Prediction], int]]:
        """Score files in chunks, streamed from disk; yields (predictions, images skipped)."""
        chunk = max(batch_size, 1) * 8
        for start in range(0, len(paths), chunk):
            part = [str(p) for p in paths[start : start + chunk]]
            image_set = ImageSet(class_ids=np.zeros(len(part), np.int64), paths=part)
            scored = self._score(image_set, batch_size, with_maps, workers, skip_bad)
            yield self._predictions(scored, [part[i] for i in scored.indices]), scored.skipped

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


# A perceptual dark-to-bright colour scale (anchors close to matplotlib's "inferno").
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def colorize(anomaly_map: np.ndarray, map_high: float) -> np.ndarray:
    """Per-pixel errors -> RGB uint8 on a fixed scale: ``map_high`` (the 99th percentile of normal
    validation pixels) sits mid-scale, twice it saturates, so maps compare across images."""
    value = np.clip(anomaly_map / (2.0 * max(map_high, 1e-8)), 0.0, 1.0)
    position = value * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (position - low)[..., None]
    rgb = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def write_heatmap(
    path: Path, anomaly_map: np.ndarray, map_high: float, size: tuple[int, int] | None = None
) -> None:
    image = Image.fromarray(colorize(anomaly_map, map_high))
    if size is not None and image.size != size:
        image = image.resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def unique_heatmap_name(source: str, used: set[str]) -> str:
    stem = Path(source).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        name = f"{stem}_{n}.png"
        n += 1
    used.add(name)
    return name


def predict_to_csv(
    predictor: Predictor,
    inputs: list[str],
    output: Path,
    heatmaps: Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    skip_bad: bool = False,
    log=print,
) -> dict:
    """Score files and folders into a CSV, written row by row as batches finish, so an interrupted
    run keeps what it scored. Returns counts for the caller to report."""
    paths = collect_image_paths(inputs)
    output.parent.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    counts = {"scored": 0, "anomalous": 0, "skipped": 0}
    with output.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for predictions, skipped in predictor.score_paths(
            paths, batch_size, heatmaps is not None, workers, skip_bad
        ):
            counts["skipped"] += skipped
            for p in predictions:
                if heatmaps is not None and p.anomaly_map is not None:
                    target = heatmaps / unique_heatmap_name(p.path, used)
                    with Image.open(p.path) as original:
                        size = original.size
                    write_heatmap(target, p.anomaly_map, predictor.normalization.map_high, size)
                    p.heatmap = str(target)
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
                counts["scored"] += 1
                counts["anomalous"] += int(p.is_anomalous)
            handle.flush()
    return counts


__all__ = ["Predictor", "Prediction", "predict_to_csv", "collect_image_paths", "colorize", "is_image_file"]

"""Shortcut warnings: how well trivial image statistics alone separate normal from abnormal images.

A test AUROC says something about a model only when nothing trivial already separates the test
set's normal images from its anomalies. On an industrial set in the official code's layout, a
15-epoch run reported test AUROC 1.000 at epoch 1; mean brightness alone separated that set's test
normals from its defects perfectly, so the 1.000 said nothing about the model (issue 10). Every
evaluation therefore also measures the AUROC of a few statistics of each image, on the very split
it reports:

* ``mean``: mean intensity (all pixels and channels, 0..255);
* ``std``: standard deviation of the intensities (all pixels and channels);
* ``gradient``: mean gradient magnitude, sqrt(dx² + dy²) of the channel-mean image with forward
  differences, over its (H-1) x (W-1) grid;
* ``size`` and ``aspect``: the original file's pixel count (width x height) and width / height,
  where the images come from files; in-memory data sets (digits, MNIST, CIFAR-10's python
  batches) have one native size and none of these.

The intensity statistics are computed on the uint8 images the model sees (resized to
``data.image_size``, converted to its channels), streamed batch by batch for file-backed sets so
memory stays bounded. An AUROC below 0.5 means the statistic separates in the other direction
(anomalies darker, smoother, smaller ...); the AUROC is reported as computed, beside its
*separability* max(a, 1 - a) and direction.

A warning is raised when a statistic's separability reaches :data:`WARN_SEPARABILITY` (0.9), or
when it comes within :data:`WARN_MARGIN` (0.05) of the model's AUROC on the same split or exceeds
it, provided the statistic separates at all (separability at least :data:`COMPARE_FROM`, 0.6: a
model at chance is not news when a coin-flip statistic matches it).

Everything here but :func:`set_statistics` is numpy in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import auroc

INTENSITY_STATISTICS = ("mean", "std", "gradient")
FILE_STATISTICS = ("size", "aspect")
STATISTICS = INTENSITY_STATISTICS + FILE_STATISTICS
TITLES = {
    "mean": "mean intensity",
    "std": "intensity std",
    "gradient": "mean gradient",
    "size": "original size",
    "aspect": "aspect ratio",
}
WARN_SEPARABILITY = 0.9
WARN_MARGIN = 0.05
COMPARE_FROM = 0.6
NOTE = (
    "AUROC of trivial image statistics alone (normal vs abnormal) on the same split as the model's "
    "AUROC; below 0.5 the statistic separates in the other direction, separability = max(a, 1 - a). "
    f"Warned when a separability reaches {WARN_SEPARABILITY:g}, or (from {COMPARE_FROM:g}) comes within "
    f"{WARN_MARGIN:g} of the model's AUROC or exceeds it."
)


# --------------------------------------------------------------------------- per image
def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """``mean``, ``std`` and ``gradient`` of each image of a uint8 batch (N, H, W, C); float64
    arrays of length N."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, H, W, C), got shape {x.shape}")
    flat = x.reshape(len(x), -1)
    gray = x.mean(axis=3)  # (N, H, W)
    dx = gray[:, :-1, 1:] - gray[:, :-1, :-1]
    dy = gray[:, 1:, :-1] - gray[:, :-1, :-1]
    magnitude = np.sqrt(dx * dx + dy * dy).reshape(len(x), -1)
    gradient = magnitude.mean(axis=1) if magnitude.shape[1] else np.zeros(len(x))
    return {"mean": flat.mean(axis=1), "std": flat.std(axis=1), "gradient": gradient}


def size_statistics(sizes: np.ndarray) -> dict[str, np.ndarray]:
    """``size`` (width x height, pixels) and ``aspect`` (width / height) from (N, 2) (width, height)."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return {"size": sizes[:, 0] * sizes[:, 1], "aspect": sizes[:, 0] / np.maximum(sizes[:, 1], 1.0)}


# --------------------------------------------------------------------------- AUROCs and warnings
def separability(value: float) -> tuple[float, str]:
    """(max(a, 1 - a), the direction in which the statistic separates) of an AUROC ``a``."""
    if value is None or math.isnan(value):
        return math.nan, "undefined"
    if value > 0.5:
        return float(value), "higher in abnormal"
    if value < 0.5:
        return float(1.0 - value), "lower in abnormal"
    return 0.5, "none"


def statistic_aurocs(labels, statistics: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per statistic: ``auroc`` (as computed, abnormal = positive), ``separability`` and
    ``direction``. A statistic that is the same for every image is left out (it separates nothing;
    :func:`constant_statistics` names it)."""
    labels = np.asarray(labels)
    out = {}
    for name, values in statistics.items():
        values = np.asarray(values, dtype=np.float64)
        if len(values) and np.all(values == values[0]):
            continue
        a = auroc(labels, values)
        sep, direction = separability(a)
        out[name] = {"auroc": a, "separability": sep, "direction": direction}
    return out


def constant_statistics(statistics: dict[str, np.ndarray]) -> dict[str, float]:
    """The statistics that are the same for every image, with that value (e.g. every file 32x32)."""
    return {
        name: float(values[0])
        for name, values in statistics.items()
        if len(values) and np.all(np.asarray(values) == values[0])
    }


def by_type_aurocs(
    labels, statistics: dict[str, np.ndarray], types: Sequence[str | None]
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`statistic_aurocs` of the normal images against each anomaly type alone."""
    labels = np.asarray(labels)
    types_array = np.asarray([t if t is not None else "" for t in types], dtype=object)
    normal = labels == 0
    out = {}
    for name in dict.fromkeys(t for t, label in zip(types_array, labels, strict=True) if label == 1):
        keep = normal | ((labels == 1) & (types_array == name))
        out[str(name)] = statistic_aurocs(labels[keep], {k: v[keep] for k, v in statistics.items()})
    return out


def is_shortcut(stat: dict[str, Any], model_auroc: float | None) -> str | None:
    """Why a statistic's AUROC makes the model's figure doubtful, or None."""
    sep = stat["separability"]
    if sep is None or math.isnan(sep):
        return None
    if sep >= WARN_SEPARABILITY:
        return f"separates at {sep:.3f} >= {WARN_SEPARABILITY:g}"
    if model_auroc is not None and not math.isnan(model_auroc) and sep >= COMPARE_FROM:
        if sep >= model_auroc:
            return f"separates at {sep:.3f}, as well as or better than the model's {model_auroc:.3f}"
        if sep >= model_auroc - WARN_MARGIN:
            return f"separates at {sep:.3f}, within {WARN_MARGIN:g} of the model's {model_auroc:.3f}"
    return None


def shortcut_warnings(
    split: str,
    table: dict[str, dict[str, Any]],
    model_auroc: float | None,
    by_type: dict[str, dict[str, dict[str, Any]]] | None = None,
    model_by_type: dict[str, float] | None = None,
) -> list[str]:
    """One line per statistic (and per anomaly type) whose AUROC makes the model's doubtful."""
    lines = []
    for name, stat in table.items():
        why = is_shortcut(stat, model_auroc)
        if why:
            lines.append(
                f"{split}: {TITLES.get(name, name)} alone (AUROC {stat['auroc']:.3f}, {stat['direction']}) {why}"
            )
    for type_name, stats in (by_type or {}).items():
        model_type = (model_by_type or {}).get(type_name)
        for name, stat in stats.items():
            why = is_shortcut(stat, model_type)
            if why:
                lines.append(
                    f"{split}, normal vs {type_name}: {TITLES.get(name, name)} alone (AUROC "
                    f"{stat['auroc']:.3f}, {stat['direction']}) {why}"
                )
    return lines


def summarize_split(
    labels,
    statistics: dict[str, np.ndarray],
    model_auroc: float | None,
    split: str,
    types: Sequence[str | None] | None = None,
    model_by_type: dict[str, float] | None = None,
    unavailable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``shortcuts`` entry of one split: the model's AUROC, each statistic's AUROC (overall
    and per anomaly type), the statistics that were constant or unavailable, and the warnings."""
    table = statistic_aurocs(labels, statistics)
    by_type = by_type_aurocs(labels, statistics, types) if types is not None else None
    entry: dict[str, Any] = {
        "model_auroc": model_auroc,
        "statistics": table,
        "constant": constant_statistics(statistics),
        "unavailable": dict(unavailable or {}),
    }
    if by_type:
        entry["by_type"] = by_type
    entry["warnings"] = shortcut_warnings(split, table, model_auroc, by_type, model_by_type)
    return entry


# --------------------------------------------------------------------------- text
def statistics_line(table: dict[str, dict[str, Any]]) -> str:
    """``mean intensity 0.441 (0.559 lower in abnormal); ...`` for a terminal or a report."""
    return "; ".join(
        f"{TITLES.get(name, name)} {s['auroc']:.3f} (separability {s['separability']:.3f}, {s['direction']})"
        for name, s in table.items()
    )


def warning_block(warnings: list[str]) -> str:
    """The loud block printed when a statistic makes the model's AUROC doubtful."""
    bar = "!" * 78
    lines = [
        bar,
        "!! SHORTCUT WARNING: a trivial image statistic separates normal from abnormal images",
        "!! about as well as the model (or very well on its own), so the model's AUROC may",
        "!! measure the data's brightness, contrast, edges or file size rather than the model:",
        *(f"!!   {w}" for w in warnings),
        "!! Check how the normal and abnormal images were collected (camera, lighting, crop,",
        "!! resizing) before trusting the figure (docs/protocols.md#shortcut-warnings).",
        bar,
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- an image set
def file_sizes(paths: Sequence[str]) -> np.ndarray | None:
    """(N, 2) (width, height) of each file, read from its header (no decoding); None when a file
    cannot be opened."""
    from PIL import Image

    sizes = np.empty((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                sizes[i] = image.size
        except (OSError, ValueError, SyntaxError):
            return None
    return sizes


def set_statistics(
    image_set,
    image_size: int,
    channels: int,
    *,
    batch_size: int = 256,
    workers: int = 0,
    skip_bad: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str]]:
    """(positions in ``image_set``, statistics of those images, why a statistic is unavailable).

    In-memory images are read in slices; file-backed ones are decoded batch by batch (memory
    bounded by one batch), their original sizes read in the same pass. An in-memory set decoded
    from files has its sizes read from the file headers."""
    from ..data.loading import iterate_batches

    # About 4 million values a batch, so a batch of 256 px images stays small too.
    per_image = image_size * image_size * channels
    batch_size = max(1, min(batch_size, (1 << 22) // max(per_image, 1)))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in INTENSITY_STATISTICS}
    indices: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for batch in iterate_batches(
        image_set,
        batch_size,
        image_size=image_size,
        channels=channels,
        workers=workers,
        skip_bad=skip_bad,
    ):
        values = image_statistics(batch.images.numpy().transpose(0, 2, 3, 1))
        for name in INTENSITY_STATISTICS:
            parts[name].append(values[name])
        indices.append(batch.indices.numpy())
        if batch.sizes is not None:
            sizes.append(batch.sizes.numpy())
    positions = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    statistics = {name: np.concatenate(v) if v else np.zeros(0, np.float64) for name, v in parts.items()}
    unavailable: dict[str, str] = {}
    if sizes and sum(len(s) for s in sizes) == len(positions):
        statistics.update(size_statistics(np.concatenate(sizes)))
    elif image_set.paths is not None:
        found = file_sizes([image_set.paths[i] for i in positions])
        if found is not None:
            statistics.update(size_statistics(found))
        else:
            for name in FILE_STATISTICS:
                unavailable[name] = "a file could not be opened to read its size"
    else:
        for name in FILE_STATISTICS:
            unavailable[name] = "images held in memory with one native size (no files)"
    return positions, statistics, unavailable

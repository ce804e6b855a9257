"""Anomaly maps as pictures: a fixed perceptual colour scale (:func:`colorize`) and PNG files
(:func:`write_heatmap`), shared by ``predict --heatmaps`` and the report's example grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ..runtime.files import write_atomic

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


def _interpolate_anchors(value: np.ndarray) -> np.ndarray:
    position = value * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (position - low)[..., None]
    rgb = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


# The colour scale sampled at 1024 levels: a table lookup per pixel instead of interpolating in
# float64 (within one colour step of the exact interpolation; several times faster).
_LEVELS = 1024
_TABLE = _interpolate_anchors(np.linspace(0.0, 1.0, _LEVELS))


def colorize(anomaly_map: np.ndarray, map_high: float) -> np.ndarray:
    """Per-pixel errors -> RGB uint8 on a fixed scale: ``map_high`` (the 99th percentile of normal
    validation pixels) sits mid-scale, twice it saturates, so maps compare across images."""
    value = np.clip(np.asarray(anomaly_map, dtype=np.float32) / (2.0 * max(map_high, 1e-8)), 0.0, 1.0)
    return _TABLE[(value * (_LEVELS - 1) + 0.5).astype(np.intp)]


# A PNG text chunk marks each map this package writes, so that a later ``predict`` recognises its
# own earlier map at a name and replaces only that (runtime/outputs.py), never a user's picture.
HEATMAP_MARK = ("Software", "skipganomaly anomaly map")


def is_heatmap_file(path: Path) -> bool:
    """Whether ``path`` is an anomaly-map PNG written by :func:`write_heatmap`."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get(HEATMAP_MARK[0]) == HEATMAP_MARK[1]
    except (OSError, ValueError, SyntaxError):
        return False


def write_heatmap(
    path: Path, anomaly_map: np.ndarray, map_high: float, size: tuple[int, int] | None = None
) -> None:
    image = Image.fromarray(colorize(anomaly_map, map_high))
    if size is not None and image.size != size:
        image = image.resize(size, Image.BILINEAR)
    # Complete or absent (a full disk leaves no half PNG): smooth maps, fast zlib level, small files.
    info = PngImagePlugin.PngInfo()
    info.add_text(*HEATMAP_MARK)
    write_atomic(
        path, lambda handle: image.save(handle, format="PNG", compress_level=1, pnginfo=info), sync=False
    )

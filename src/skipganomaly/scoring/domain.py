"""Out of domain: is an image unlike anything the model saw in training? Statistics of the training
images, stored when a run finishes (``RUN_DIR/domain.json``) and carried by its export's metadata
(``domain``), and the check of one image against them. numpy and Pillow only (no PyTorch).

An anomaly scorer answers "how unlike the normal images is this?" only for images of the kind it
was trained on. An image of another kind (another shape, colour where training was grey, far
brighter or flatter than any training image) gets a score that means little, so the check flags it
as a separate warning: it changes neither the score nor the verdict. A high score alone is an
anomaly, not out of domain.

What is stored, from the normal training images (at most :data:`SAMPLE` of them):

* ``aspect``: the range of the source images' width / height (1 for the array data sets); an image
  outside it by more than :data:`ASPECT_MARGIN` (relative) is flagged;
* ``colourfulness`` of the source images (the mean absolute difference between their R, G and B
  channels, in 8-bit levels; 0 for grey), and ``mean`` and ``contrast`` (standard deviation) of the
  prepared images' 8-bit levels: each as the training images' 0.1% and 99.9% quantiles widened on
  both sides by :data:`RANGE_MARGIN` of their spread (at least one level); a value outside is
  flagged. A grey run flags colour only above :data:`GREY_COLOURFULNESS` as well (JPEG artefacts
  of a grey image stay below it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..specs.errors import UserError

DOMAIN_FILE = "domain.json"
GREY_COLOURFULNESS = 6.0  # 8-bit levels
SAMPLE = 2000
ASPECT_MARGIN = 0.15
RANGE_MARGIN = 0.25
QUANTILES = (0.001, 0.999)
_THUMBNAIL = 64  # source facts are read from a thumbnail: cheap for large files


@dataclass(frozen=True)
class SourceFacts:
    """What the check needs of an image before it is prepared (resized, made grey)."""

    width: int
    height: int
    colourfulness: float


def colourfulness(array: np.ndarray) -> float:
    """Mean absolute difference between the R, G and B channels (8-bit levels; 0 for grey)."""
    if array.ndim != 3 or array.shape[2] < 3:
        return 0.0
    rgb = array[:, :, :3].astype(np.float32)
    return float(
        (
            np.abs(rgb[..., 0] - rgb[..., 1])
            + np.abs(rgb[..., 1] - rgb[..., 2])
            + np.abs(rgb[..., 0] - rgb[..., 2])
        ).mean()
        / 3.0
    )


def source_facts(image: Image.Image) -> SourceFacts:
    """An image's own shape and colourfulness (from a thumbnail of its RGB version)."""
    width, height = image.size
    if image.mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        return SourceFacts(width, height, 0.0)
    thumb = image.convert("RGB")
    thumb.thumbnail((_THUMBNAIL, _THUMBNAIL))
    return SourceFacts(width, height, colourfulness(np.asarray(thumb)))


def _range(values: np.ndarray) -> list[float]:
    low, high = np.quantile(values.astype(np.float64), QUANTILES)
    spread = max(float(high - low), 1.0)  # at least one 8-bit level
    return [float(low - RANGE_MARGIN * spread), float(high + RANGE_MARGIN * spread)]


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of prepared uint8 (N, H, W, C): the mean and the contrast of its levels."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    return {"mean": flat.mean(1), "contrast": flat.std(1)}


@dataclass(frozen=True)
class DomainStats:
    """The training images' domain (see the module docstring)."""

    channels: int
    images: int
    aspect: list[float]
    ranges: dict[str, list[float]]

    @classmethod
    def from_images(cls, images: np.ndarray, facts: list[SourceFacts]) -> DomainStats:
        """From the prepared uint8 (N, H, W, C) training images and their sources' facts."""
        stats = image_statistics(images)
        stats["colourfulness"] = np.array([f.colourfulness for f in facts], np.float64)
        aspects = np.array([f.width / max(f.height, 1) for f in facts], np.float64)
        return cls(
            channels=int(images.shape[3]),
            images=len(images),
            aspect=[float(aspects.min()), float(aspects.max())],
            ranges={name: _range(values) for name, values in stats.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainStats:
        return cls(
            channels=int(data["channels"]),
            images=int(data["images"]),
            aspect=[float(v) for v in data["aspect"]],
            ranges={str(k): [float(v[0]), float(v[1])] for k, v in data["ranges"].items()},
        )

    def check(self, prepared: np.ndarray, facts: SourceFacts) -> str:
        """Why one image is out of domain ("" when it is not): ``prepared`` is its (H, W, C) uint8
        model input, ``facts`` its source's."""
        reasons = []
        aspect = facts.width / max(facts.height, 1)
        low, high = self.aspect
        if aspect < low * (1 - ASPECT_MARGIN) or aspect > high * (1 + ASPECT_MARGIN):
            span = f"{low:.2f}" if low == high else f"{low:.2f} to {high:.2f}"
            reasons.append(f"aspect {aspect:.2f} (width / height) where training had {span}")
        values = {name: float(v[0]) for name, v in image_statistics(prepared[None]).items()}
        values["colourfulness"] = facts.colourfulness
        for name, (low, high) in self.ranges.items():
            value = values.get(name)
            if value is None or low <= value <= high:
                continue
            if name == "colourfulness" and self.channels == 1:
                if value > GREY_COLOURFULNESS:
                    reasons.append(f"colour (colourfulness {value:.1f}) where training was grey")
                continue
            reasons.append(f"{name} {value:.1f} outside the training range {low:.1f} to {high:.1f}")
        return "; ".join(reasons)


def domain_of(image_set, size: int, channels: int) -> DomainStats:
    """The domain of a split's images (an :class:`~skipganomaly.data.base.ImageSet`, read from
    arrays or files), from at most :data:`SAMPLE` of them evenly spaced."""
    from ..data.images import open_image, prepare_image

    n = len(image_set)
    picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64)) if n else []
    prepared, facts = [], []
    for i in picks:
        if image_set.images is not None:
            array = image_set.images[i]
            image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        else:
            try:
                image = open_image(image_set.paths[i])
            except (OSError, ValueError, UserError):  # a bad training file (skipped in training too)
                continue
        facts.append(source_facts(image))
        prepared.append(prepare_image(image, size, channels))
    if not prepared:
        raise ValueError("no training image could be read to describe the domain")
    return DomainStats.from_images(np.stack(prepared), facts)


def write_domain(run_dir: str | os.PathLike, stats: DomainStats) -> Path:
    from ..runtime.files import write_text

    path = Path(run_dir) / DOMAIN_FILE
    write_text(path, json.dumps(stats.to_dict(), indent=2) + "\n")
    return path


def read_domain(run_dir: str | os.PathLike) -> DomainStats | None:
    """The run's stored domain, or None when it has none (a run trained before it was stored)."""
    path = Path(run_dir) / DOMAIN_FILE
    if not path.is_file():
        return None
    try:
        return DomainStats.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, IndexError):
        return None

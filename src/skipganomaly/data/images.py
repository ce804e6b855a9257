"""Image files -> uint8 arrays at the model's size and channel count.

Every reader and ``predict`` go through :func:`load_image`, so a file is prepared the same way
for training and for scoring: any format Pillow reads; palette, RGBA (alpha dropped), CMYK,
16-bit and float images converted; resized to ``size`` x ``size``; 1 or 3 channels.

A file that cannot be read is a :class:`BadImageError` naming it (refused, or skipped with
``--skip-bad-images``); so is an image with more pixels than ``max_pixels``
(``data.max_image_pixels``, Pillow's own limit by default), checked from the header before
anything is decoded, so a tiny file claiming 14000 x 14000 pixels costs nothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..specs.config import DataConfig
from ..specs.errors import UserError

DEFAULT_MAX_IMAGE_PIXELS = DataConfig.max_image_pixels

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)


class BadImageError(UserError):
    """An image file that cannot be read: names the file."""


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder``, sorted, hidden files skipped."""
    folder = Path(folder)
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


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


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16-bit and float modes to 8-bit by their actual value range (1-bit, P, CMYK stay)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            high = 65535.0
        elif image.mode == "I":
            high = 65535.0 if array.max() > 255 else 255.0
        else:
            high = 1.0 if array.max() <= 1.0 else max(float(array.max()), 1.0)
        array = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array)
    return image


def prepare_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert one PIL image to a (size, size, channels) uint8 array."""
    image = _to_8bit(image)
    if channels == 1:
        image = image.convert("L")
    else:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA").convert("RGB")
        else:
            image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class Preprocessing:
    """How any image becomes a model input, as every reader and the scorer do it: 16-bit and float
    images scaled to 8 bits; converted to grayscale (1 channel) or RGB (3; transparency dropped);
    resized to ``image_size`` x ``image_size`` (bilinear; no crop, the aspect ratio is not kept);
    then ``x / 127.5 - 1`` to [-1, 1] (:func:`skipganomaly.data.loading.to_model_input`)."""

    image_size: int
    channels: int
    resample: str = "bilinear"
    input_range: tuple[float, float] = (-1.0, 1.0)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """One PIL image as the (size, size, channels) uint8 array the model's batches hold."""
        return prepare_image(image, self.image_size, self.channels)

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "resample": self.resample,
            "input_range": list(self.input_range),
        }


def check_pixel_values(image: Image.Image, where: str) -> None:
    """A decoded image's values must be numbers the scaling to 8 bits can use: a float or 32-bit
    image (TIFF modes F and I) with NaN, infinite or negative pixels is a :class:`BadImageError`
    (its range scaling would turn one such pixel into a black or meaningless image)."""
    if image.mode not in ("F", "I"):
        return
    values = np.asarray(image)
    if values.size and not np.isfinite(values).all():
        raise BadImageError(f"{where} holds NaN or infinite pixel values; only finite values can be scored")
    if values.size and values.min() < 0:
        raise BadImageError(f"{where} holds negative pixel values; use values from 0 up")


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image, raising :class:`BadImageError` naming the file (unreadable,
    or more than ``max_pixels`` pixels)."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"image {path} does not exist")
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # a larger limit asked for: Pillow's own check follows it
    try:
        with warnings.catch_warnings():
            # Between Pillow's limit and twice it, Pillow only warns; the limit is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImageError(_too_large(path, width, height, max_pixels))
                image.load()
                check_pixel_values(image, f"image {path}")
                return image.copy() if image.mode != "P" else image.convert("RGBA")
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused by Pillow itself
        raise BadImageError(_too_large(path, None, None, max_pixels)) from None
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImageError(
            f"image {path} cannot be read ({reason}); remove or replace it, or pass --skip-bad-images"
        ) from None


def _too_large(path: Path, width: int | None, height: int | None, limit: int) -> str:
    size = f"{width} x {height} pixels" if width is not None else "more pixels than Pillow allows"
    return (
        f"image {path} is too large ({size}, limit {limit:,} pixels; a decompression bomb?); remove it, "
        "pass --skip-bad-images, or raise --max-image-pixels"
    )


def load_image(
    path: str | os.PathLike, size: int, channels: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Read an image file as a (size, size, channels) uint8 array."""
    return prepare_image(open_image(path, max_pixels), size, channels)


def load_mask(path: str | os.PathLike, size: int) -> np.ndarray:
    """A ground-truth mask file as a (size, size) bool array: a pixel is anomalous when at least
    half of the mask's area that falls into it is marked (area resampling, so thin defects are
    not lost to nearest-neighbour sampling when a 900x900 mask shrinks to the model's size)."""
    mask = open_image(path).convert("L")
    if mask.size != (size, size):
        mask = mask.resize((size, size), Image.BOX)
    return np.asarray(mask) >= 128


def load_image_and_size(
    path: str | os.PathLike, size: int, channels: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` plus the file's own (width, height), read in the same pass (heatmaps are
    written at the original size without opening the file again)."""
    image = open_image(path, max_pixels)
    return prepare_image(image, size, channels), image.size


def native_channels(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> int:
    """1 for grayscale files, 3 for anything with colour."""
    image = open_image(path, max_pixels)
    return 1 if _to_8bit(image).mode in ("L", "1") else 3


def prepare_array(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 images -> (N, size, size, channels), each converted as :func:`prepare_image`
    converts a file (so a data set read from arrays matches the same images read from files)."""
    if images.shape[1:] == (size, size, channels):
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, image in enumerate(images):
        out[i] = prepare_image(
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image), size, channels
        )
    return out

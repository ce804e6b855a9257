"""In-memory images (numpy arrays, PIL images) checked and converted, one at a time, by the same
rules wherever they enter: ``Detector.score``, ``Predictor.score_arrays`` and the service. A file
is checked the same way when it is decoded (:func:`~.images.open_image`).

Accepted (anything else is a :class:`~.images.BadImageError` naming the image's position):

* shapes H x W, H x W x 1, H x W x 3 (RGB), H x W x 4 (RGBA), at least 1 x 1, and at most
  ``max_image_pixels`` pixels (H x W), as a file;
* dtypes and values: ``bool`` (True is white); ``uint8``; ``uint16`` (the full 16-bit range);
  other integers with values in [0, 65535] (read as 8-bit when none is over 255, else as 16-bit);
  floats (``float16``/``32``/``64``) with finite values in [0, 255], read as [0, 1] when none is
  over 1. One-channel 16-bit, integer and float arrays are scaled as files of those modes are
  (:func:`~.images.prepare_image`).
* refused: NaN or infinite values, values outside those ranges (an ``int64`` near 2**62 is not
  wrapped to 0), complex numbers (their imaginary part is not dropped), and object, string,
  bytes, date and structured arrays.

No PyTorch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..specs.errors import UserError
from .images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, check_pixel_values

SHAPES = "H x W, H x W x 1, H x W x 3 or H x W x 4"


def _refuse(where: str, array: np.ndarray, what: str) -> BadImageError:
    return BadImageError(f"{where} (an array of shape {array.shape}, {array.dtype}) {what}")


def checked_array(array: np.ndarray, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """``array`` checked against the module's rules: its shape (a trailing channel of 1 dropped),
    or a BadImageError naming ``where`` (e.g. "image 3")."""
    kind = array.dtype.kind
    if kind not in "biuf":
        names = {"c": "complex numbers", "O": "Python objects", "U": "text", "S": "bytes", "M": "dates"}
        raise _refuse(
            where,
            array,
            f"holds {names.get(kind, 'values that are not numbers')}; pass bool, integer or float pixels",
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or min(array.shape[:2]) < 1:
        raise _refuse(where, array, f"is not an image; pass {SHAPES}")
    height, width = array.shape[:2]
    if height * width > max_pixels:
        raise _refuse(
            where,
            array,
            f"has {width} x {height} pixels, over the limit of {max_pixels:,} (max_image_pixels)",
        )
    if kind in "bu" and array.dtype.itemsize <= 2:
        return array  # bool, uint8, uint16: every value is in range
    low, high = (
        (float(array.min()), float(array.max())) if kind == "f" else (int(array.min()), int(array.max()))
    )
    if kind == "f" and not np.isfinite(array).all():
        raise _refuse(where, array, "holds NaN or infinite values; only finite pixel values can be scored")
    limit = 255 if kind == "f" else 65535
    if low < 0 or high > limit:
        raise _refuse(
            where,
            array,
            f"holds values from {low:g} to {high:g}; {array.dtype} pixels must lie in [0, {limit}]",
        )
    return array


def image_from_array(
    array: np.ndarray, where: str = "the image", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """A checked numpy image as the PIL image a file of that kind would open as, so that it is
    prepared the same way: 8-bit as is; one channel of 16-bit, integers or floats in the modes
    Pillow gives such files (scaled to 8 bits when prepared); colour that is not 8-bit scaled
    here (floats in [0, 1] or [0, 255], 16-bit and integers over 255 by 257)."""
    array = checked_array(np.asarray(array), where, max_pixels)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array))
    if array.ndim == 2:
        # Pillow picks the file modes from the dtype: uint16 -> I;16, int32 -> I, float32 -> F.
        if array.dtype == np.uint16:
            return Image.fromarray(np.ascontiguousarray(array))
        if array.dtype.kind in "iu":
            return Image.fromarray(np.ascontiguousarray(array.astype(np.int32)))
        return Image.fromarray(np.ascontiguousarray(array.astype(np.float32)))
    values = array.astype(np.float64)
    if array.dtype.kind in "iu" and (array.dtype == np.uint16 or values.max() > 255):
        values = values / 257.0
    elif array.dtype.kind == "f" and values.size and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8))


def as_image(item: Any, where: str = "the image", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """One in-memory image (a PIL image or a numpy array) checked by the module's rules, as a PIL
    image; a BadImageError naming ``where`` for anything else."""
    if isinstance(item, Image.Image):
        width, height = item.size
        if width * height > max_pixels:
            raise BadImageError(
                f"{where} (a {width} x {height} PIL image) is over the limit of {max_pixels:,} pixels "
                "(max_image_pixels)"
            )
        check_pixel_values(item, where)
        return item
    if isinstance(item, np.ndarray):
        return image_from_array(item, where, max_pixels)
    raise BadImageError(
        f"{where} is a {type(item).__name__}; pass PIL images, numpy arrays or image file paths"
    )


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """A call's batch size: a whole number, 1 or more (a UserError otherwise, not a numpy error
    about stacking nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name}={value!r}: use a whole number of images, 1 or more")
    return int(value)

"""The default data set: scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the
package, so a fresh install trains and evaluates offline.

Images are upscaled from 8x8 to the model's size (bilinear) and split into train and test pools
with a seeded stratified 80:20 split; the protocols then treat one digit as the abnormal class.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import ImageSet, LabelledSource, SplitInfo

CLASS_NAMES = [str(d) for d in range(10)]
TEST_FRACTION = 0.2


def load_digits_source(
    image_size: int = 32, channels: int | None = None, split_seed: int = 0
) -> LabelledSource:
    digits = load_digits()
    raw = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    eight_bit = np.clip(np.round(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR)) for im in eight_bit]
    )[..., None]
    channels = channels or 1
    if channels == 3:
        images = np.repeat(images, 3, axis=3)
    targets = np.asarray(digits.target, dtype=np.int64)
    index = np.arange(len(targets))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, random_state=split_seed, stratify=targets
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return LabelledSource(
        name="digits",
        class_names=CLASS_NAMES,
        train=ImageSet(class_ids=targets[train_idx], images=images[train_idx], ids=_ids(train_idx)),
        test=ImageSet(class_ids=targets[test_idx], images=images[test_idx], ids=_ids(test_idx)),
        channels=channels,
        default_abnormal_class="0",
        # Both pools keep scikit-learn's order (sorted indices), which the paper protocol keeps.
        info=SplitInfo(storage="in memory (embedded in scikit-learn)", original_order=True),
    )


def _ids(index: np.ndarray) -> list[str]:
    return [f"digits:{i:04d}" for i in index]

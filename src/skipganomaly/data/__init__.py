"""Data: readers (one per data set), the protocols' split rule, and batches.

``prepare_data(config.data)`` is the single entry point: it reads the named data set, applies the
protocol, and returns :class:`Splits` with train, validation and test :class:`ImageSet` s.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import DataConfig
from ..errors import UserError
from .base import ImageSet, LabelledSource, SplitInfo, Splits
from .cifar import read_cifar10
from .digits import load_digits_source
from .folders import read_folder
from .mnist import read_fashion_mnist, read_mnist
from .mvtec import read_mvtec
from .splits import make_splits


def _digits(cfg: DataConfig) -> LabelledSource:
    return load_digits_source(cfg.image_size, cfg.channels, cfg.split_seed)


# name -> reader returning a class-labelled source. Readers of data sets that come with their
# own normal/abnormal split (MVTec AD, the reference layout) return Splits directly instead.
READERS: dict[str, Callable[[DataConfig], LabelledSource | Splits]] = {
    "digits": _digits,
    "cifar10": read_cifar10,
    "mnist": read_mnist,
    "fashion-mnist": read_fashion_mnist,
    "folder": read_folder,
    "mvtec": read_mvtec,
}


def prepare_data(cfg: DataConfig) -> Splits:
    """Read ``cfg.dataset`` and split it by ``cfg.protocol``."""
    if cfg.dataset not in READERS:
        raise UserError(f"dataset {cfg.dataset!r} is unknown; choose one of {', '.join(READERS)}")
    loaded = READERS[cfg.dataset](cfg)
    if isinstance(loaded, Splits):
        return loaded
    return make_splits(loaded, cfg)


__all__ = ["ImageSet", "LabelledSource", "SplitInfo", "Splits", "READERS", "prepare_data"]

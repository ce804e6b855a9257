"""Data: readers (one per data set), the protocols' split rule, and batches.

``prepare_data(config.data)`` is the single entry point: it reads the named data set, applies the
protocol, and returns :class:`Splits` with train, validation and test :class:`ImageSet` s.

The readers are imported when first needed (``READERS``, ``prepare_data``), so that importing
``skipganomaly.data.images`` alone, as the PyTorch-free scoring path does (:mod:`skipganomaly.deploy.detector`),
loads neither PyTorch nor scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..specs.errors import UserError
from .base import ImageSet, LabelledSource, SplitInfo, Splits

if TYPE_CHECKING:
    from ..specs.config import DataConfig


def _digits(cfg: DataConfig) -> LabelledSource:
    from .digits import load_digits_source

    return load_digits_source(cfg.image_size, cfg.channels, cfg.split_seed)


def _readers() -> dict[str, Callable[[DataConfig], LabelledSource | Splits]]:
    """name -> reader returning a class-labelled source. Readers of data sets that come with their
    own normal/abnormal split (MVTec AD, the reference layout) return Splits directly instead."""
    from .cifar import read_cifar10
    from .folders import read_folder
    from .mnist import read_fashion_mnist, read_mnist
    from .mvtec import read_mvtec

    return {
        "digits": _digits,
        "cifar10": read_cifar10,
        "mnist": read_mnist,
        "fashion-mnist": read_fashion_mnist,
        "folder": read_folder,
        "mvtec": read_mvtec,
    }


def __getattr__(name: str) -> Any:
    if name == "READERS":
        readers = _readers()
        globals()["READERS"] = readers  # built once
        return readers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prepare_data(cfg: DataConfig) -> Splits:
    """Read ``cfg.dataset`` and split it by ``cfg.protocol``."""
    from .splits import make_splits

    readers = __getattr__("READERS") if "READERS" not in globals() else globals()["READERS"]
    if cfg.dataset not in readers:
        raise UserError(f"dataset {cfg.dataset!r} is unknown; choose one of {', '.join(readers)}")
    loaded = readers[cfg.dataset](cfg)
    if isinstance(loaded, Splits):
        return loaded
    return make_splits(loaded, cfg)


__all__ = ["ImageSet", "LabelledSource", "SplitInfo", "Splits", "READERS", "prepare_data"]

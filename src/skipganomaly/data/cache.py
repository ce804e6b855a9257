"""The cache directory (:func:`~skipganomaly.runtime.files.cache_root`): downloads, extracted archives, and decoded image arrays.

Where: ``data.cache_dir`` (``--cache-dir``) if set, else the ``SKIPGANOMALY_CACHE`` environment
variable, else ``~/.cache/skipganomaly``. Layout::

    downloads/<dataset>/<official file name>    verified by checksum when downloaded
    extracted/<archive name>-<key>/             an archive unpacked once (complete or absent)
    arrays/<dataset>-<size>px-<channels>c-<key>.npz   decoded uint8 images, labels and ids

An array file is keyed by the data set, the identity of its source files (paths, sizes and
modification times), the image size and the channel count, so a changed source or a different
``--image-size`` decodes again, and the second run with the same inputs loads the decoded arrays
in a second or two instead of decoding every file. Every entry is written to a temporary name
and renamed when complete, so an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..runtime.files import cache_root, write_atomic
from ..specs.config import DataConfig

# Bump when what a reader stores in its arrays changes, so old cache entries are not reused.
ARRAY_FORMAT = 1


def file_fingerprint(paths: Iterable[Path], root: Path | None = None) -> str:
    """A short hash of (relative path, size, modification time) of each file: changes when any
    file is added, removed, replaced or edited."""
    digest = hashlib.sha1()
    for path in paths:
        stat = path.stat()
        name = str(path.relative_to(root)) if root is not None else str(path.resolve())
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def key_of(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def array_cache_path(cfg: DataConfig, dataset: str, source_key: str, channels: int) -> Path:
    key = key_of(ARRAY_FORMAT, dataset, source_key, cfg.image_size, channels)
    name = f"{dataset}-{cfg.image_size}px-{channels}c-{key}.npz"
    return cache_root(cfg) / "arrays" / name


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path``, or None when absent or unreadable (then decoded again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, KeyError):
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Store ``arrays`` (uncompressed: loading is then a plain read). Returns False when the cache
    cannot be written (read-only or full disk): the run goes on without a cache."""
    try:
        write_atomic(path, lambda handle: np.savez(handle, **arrays))
    except OSError:
        return False
    return True

"""CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test images of 10 classes, 32x32 RGB.

``--data-root`` may be any of:

* the python format: the ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``),
  a folder holding it, or the ``cifar-10-python.tar.gz`` archive (unpacked into the cache);
* the class-folder layout ``train/<class>/*`` and ``test/<class>/*`` (as in the shared
  ``cifar10-jpeg75.tar.gz``), as a folder or an archive of it;
* nothing: the official archive is then downloaded into the cache (``data.download``), its MD5
  checked against the published one.

Class names and their order are CIFAR's own (``airplane`` ... ``truck``). The decoded images are
cached as ``.npz`` (see :mod:`.cache`), so only the first run decodes.

The batches are Python pickles. They are read with an unpickler that only builds dicts, lists,
strings, numbers and numpy arrays, so a tampered batch file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..runtime.files import cache_root
from ..specs.config import DataConfig
from ..specs.errors import UserError
from .archives import is_archive, unpack_archive
from .base import LabelledSource, SplitInfo, source_from_arrays
from .cache import array_cache_path, file_fingerprint, key_of, load_arrays, save_arrays
from .download import download
from .folders import class_folder_source, subfolders
from .images import prepare_array

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
EXPECTED = (
    "a cifar-10-batches-py folder, the cifar-10-python.tar.gz archive, or train/<class>/ and "
    "test/<class>/ folders"
)


class _BatchUnpickler(pickle.Unpickler):
    """Builds only the plain values and numpy arrays a CIFAR batch holds."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (uint8 images (N, 32, 32, 3), int64 labels (N,))."""
    try:
        with open(path, "rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
        images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
        if len(images) != len(labels) or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
            raise ValueError("labels do not match the images")
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        AttributeError,
        KeyError,
        ValueError,
        TypeError,
    ) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"CIFAR-10 batch {path} cannot be read ({reason}); it may be truncated: unpack or download it again"
        ) from None
    return np.ascontiguousarray(images), labels


def python_format_source(cfg: DataConfig, folder: Path) -> LabelledSource:
    """The ``cifar-10-batches-py`` folder, decoded (and resized) once and cached."""
    files = [folder / name for name in TRAIN_BATCHES + TEST_BATCHES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{folder} lacks the CIFAR-10 batches {', '.join(missing)}; unpack the archive again")
    channels = cfg.channels or 3
    source_key = key_of(folder.resolve(), file_fingerprint(files, folder))
    cache_file = array_cache_path(cfg, "cifar10", source_key, channels)
    stored = load_arrays(cache_file)
    if stored is not None:
        storage = f"in memory, loaded from cache {cache_file}"
    else:
        parts = {}
        for part, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
            batches = [read_batch(folder / name) for name in names]
            images = np.concatenate([b[0] for b in batches])
            parts[f"{part}_images"] = prepare_array(images, cfg.image_size, channels)
            parts[f"{part}_labels"] = np.concatenate([b[1] for b in batches])
            parts[f"{part}_ids"] = np.asarray(
                [
                    f"{name}:{i:05d}"
                    for name, (imgs, _) in zip(names, batches, strict=True)
                    for i in range(len(imgs))
                ]
            )
        stored = parts
        saved = save_arrays(cache_file, parts)
        storage = "in memory, " + (f"cached in {cache_file}" if saved else "cache not writable")
    ids = {part: [str(i) for i in stored[f"{part}_ids"]] for part in ("train", "test")}
    # The batches' own order: the paper protocol keeps it (data.splits.official_evaluation_order).
    info = SplitInfo(root=str(folder), format="python batches", storage=storage, original_order=True)
    return source_from_arrays("cifar10", CLASS_NAMES, stored, ids, channels, info)


def _find_layout(folder: Path, cfg: DataConfig, depth: int = 0) -> LabelledSource:
    if (folder / "data_batch_1").is_file():
        return python_format_source(cfg, folder)
    if (folder / BATCHES_DIR / "data_batch_1").is_file():
        return python_format_source(cfg, folder / BATCHES_DIR)
    if (folder / ARCHIVE_NAME).is_file():
        return _find_layout(unpack_archive(folder / ARCHIVE_NAME, cfg), cfg, depth + 1)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        source = class_folder_source(cfg, folder, "cifar10", class_names=CLASS_NAMES)
        source.info.format = "class folders"
        return source
    inner = subfolders(folder)
    if len(inner) == 1 and depth < 2:  # an archive that wraps everything in one top folder
        return _find_layout(inner[0], cfg, depth + 1)
    raise UserError(f"{folder} does not look like CIFAR-10; expected {EXPECTED}")


def read_cifar10(cfg: DataConfig) -> LabelledSource:
    if cfg.root:
        root = Path(cfg.root).expanduser()
        if not root.exists():
            raise UserError(f"--data-root {root} does not exist; point it at {EXPECTED}")
        if is_archive(root):
            root = unpack_archive(root, cfg)
        return _find_layout(root, cfg)
    target = cache_root(cfg) / "downloads" / "cifar10" / ARCHIVE_NAME
    archive = download(URLS, target, ARCHIVE_MD5, allowed=cfg.download, what="CIFAR-10")
    return _find_layout(unpack_archive(archive, cfg), cfg)

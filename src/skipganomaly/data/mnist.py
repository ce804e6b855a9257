"""MNIST (LeCun et al.) and Fashion-MNIST (Xiao et al., 2017) from their idx files.

Each is 60,000 training and 10,000 test 28x28 grayscale images of 10 classes, in four files:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, gzipped (``.gz``) or not. ``--data-root`` is the folder holding
them (torchvision's ``<root>/MNIST/raw`` and ``<root>/FashionMNIST/raw`` are found too).
Without ``--data-root`` the official gzipped files are downloaded into the cache
(``data.download``), each checked against its published MD5.

Class names: MNIST ``0`` ... ``9``; Fashion-MNIST ``t-shirt``, ``trouser``, ``pullover``,
``dress``, ``coat``, ``sandal``, ``shirt``, ``sneaker``, ``bag``, ``ankle-boot`` (the official
labels, lower case, one word each so they work as ``--abnormal-class`` values and folder names).
A class's index (0-9) works too.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.files import cache_root
from ..specs.config import DataConfig
from ..specs.errors import UserError
from .base import LabelledSource, SplitInfo, source_from_arrays
from .cache import array_cache_path, file_fingerprint, key_of, load_arrays, save_arrays
from .download import download
from .folders import resolve_root, subfolders
from .images import prepare_array

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxDataset:
    name: str
    title: str
    class_names: list[str]
    mirrors: list[str]
    md5: dict[str, str]  # official .gz file name -> MD5
    torchvision_dir: str


MNIST = IdxDataset(
    name="mnist",
    title="MNIST",
    class_names=[str(d) for d in range(10)],
    mirrors=[
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ],
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    torchvision_dir="MNIST",
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    class_names=[
        "t-shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle-boot",
    ],
    mirrors=[
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    torchvision_dir="FashionMNIST",
)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a uint8 array, its size checked against its header."""
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"idx file {path} cannot be read ({reason}); it may be truncated: get it again"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise UserError(f"{path} is not an idx file of unsigned bytes (bad header); get it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"idx file {path} is truncated (header cut short); get it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(
            f"idx file {path} holds {len(raw) - header:,} bytes of data but its header says {expected:,}; "
            "it is truncated or corrupt: get it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_file(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                return folder / name
    return None


def find_files(root: Path, dataset: IdxDataset) -> dict[str, Path]:
    """The four idx files in ``root``, its ``raw/``, torchvision's ``<Name>/raw/``, or one level down."""
    folders = [root, root / "raw", root / dataset.torchvision_dir / "raw", *subfolders(root)]
    found = {key: _find_file(folders, stem) for key, stem in FILES.items()}
    missing = [FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise UserError(
            f"{root} lacks the {dataset.title} files {', '.join(missing)} (.gz or not); "
            f"point --data-root at the folder holding them, or omit it to download {dataset.title}"
        )
    return found


def downloaded_files(cfg: DataConfig, dataset: IdxDataset) -> dict[str, Path]:
    folder = cache_root(cfg) / "downloads" / dataset.name
    files = {}
    for key, stem in FILES.items():
        name = f"{stem}.gz"
        urls = [mirror + name for mirror in dataset.mirrors]
        files[key] = download(
            urls, folder / name, dataset.md5[name], allowed=cfg.download, what=f"{dataset.title} {name}"
        )
    return files


def idx_source(cfg: DataConfig, dataset: IdxDataset) -> LabelledSource:
    if cfg.root:
        root = resolve_root(
            cfg, dataset.name, f"the folder (or an archive of it) holding the {dataset.title} idx files"
        )
        files = find_files(root, dataset)
    else:
        root = cache_root(cfg) / "downloads" / dataset.name
        files = downloaded_files(cfg, dataset)
    channels = cfg.channels or 1
    ordered = [files[key] for key in FILES]
    cache_file = array_cache_path(cfg, dataset.name, key_of(file_fingerprint(ordered)), channels)
    stored = load_arrays(cache_file)
    if stored is not None:
        storage = f"in memory, loaded from cache {cache_file}"
    else:
        stored = {}
        for part in ("train", "test"):
            images = read_idx(files[f"{part}_images"])
            labels = read_idx(files[f"{part}_labels"]).astype(np.int64)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise UserError(
                    f"{files[f'{part}_images']} and {files[f'{part}_labels']} do not match "
                    f"({images.shape[0]} images, {labels.shape[0]} labels); get them again"
                )
            if len(labels) and labels.max() >= len(dataset.class_names):
                raise UserError(
                    f"{files[f'{part}_labels']} holds labels above 9; is it a {dataset.title} file?"
                )
            stored[f"{part}_images"] = prepare_array(images[..., None], cfg.image_size, channels)
            stored[f"{part}_labels"] = labels
        saved = save_arrays(cache_file, stored)
        storage = "in memory, " + (f"cached in {cache_file}" if saved else "cache not writable")
    ids = {
        part: [f"{dataset.name}:{part}:{i:05d}" for i in range(len(stored[f"{part}_labels"]))]
        for part in ("train", "test")
    }
    # The idx files' own order: the paper protocol keeps it (data.splits.official_evaluation_order).
    info = SplitInfo(root=str(root), format="idx", storage=storage, original_order=True)
    return source_from_arrays(dataset.name, dataset.class_names, stored, ids, channels, info)


def read_mnist(cfg: DataConfig) -> LabelledSource:
    return idx_source(cfg, MNIST)


def read_fashion_mnist(cfg: DataConfig) -> LabelledSource:
    return idx_source(cfg, FASHION_MNIST)

"""Folders of image files: finding the data root, decoding or streaming, and the ``folder`` data set.

``--dataset folder --data-root ROOT`` reads any of three layouts:

* ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``: a class-labelled data set with its own
  train and test pools; both protocols apply (``--abnormal-class`` or ``--normal-class``).
* ``ROOT/<class>/*`` only: class folders without a split; each class is split 80:20 into train
  and test pools, seeded by ``data.split_seed`` (``TEST_FRACTION``).
* the reference code's layout, ``ROOT/train/0.normal``, ``ROOT/test/0.normal`` and
  ``ROOT/test/1.abnormal``: normal and abnormal given directly; the training images are the
  normal ones of ``train``, the labelled evaluation pool is ``test``. Sub-folders of an
  abnormal folder (``test/1.abnormal/knife/``) name kinds of anomaly, reported one by one in the
  paper's Table II layout.

Images within a class folder are found recursively (any format Pillow reads; hidden files
skipped). ``ROOT`` may also be an archive (.tar.gz, .zip), unpacked once into the cache.

Memory: a set whose decoded size (images x size x size x channels bytes) fits in
``data.max_memory_mb`` (default 4096) is decoded once into a uint8 array and cached as ``.npz``
(see :mod:`.cache`); a larger one stays a list of files decoded by DataLoader workers
(``--workers``) as batches are drawn, so memory stays bounded whatever the folder's size.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..specs.config import DataConfig
from ..specs.errors import UserError
from .archives import is_archive, unpack_archive
from .base import ImageSet, LabelledSource, SplitInfo, Splits, pool_counts
from .cache import array_cache_path, key_of, load_arrays, save_arrays
from .images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, is_image_file, load_image, native_channels
from .splits import apply_protocol

TEST_FRACTION = 0.2
CHANNEL_PROBES = 16
# The official code's custom layout names its folders 0.normal and 1.abnormal (ImageFolder order);
# plain "normal"/"abnormal" folders are left to the class-folder layout, where both protocols apply.
REFERENCE_NAME = re.compile(r"^\d+\.(normal|abnormal)$")
FORMATS_HINT = "png, jpg, bmp, tif, ..."


# --------------------------------------------------------------------------- roots and folders
def resolve_root(cfg: DataConfig, dataset: str, expected: str) -> Path:
    """``--data-root`` as a folder: an archive is unpacked into the cache first."""
    if not cfg.root:
        raise UserError(f"dataset {dataset} needs --data-root pointing at {expected}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise UserError(f"--data-root {root} does not exist; point it at {expected}")
    if is_archive(root):
        return unpack_archive(root, cfg)
    if not root.is_dir():
        raise UserError(f"--data-root {root} is neither a folder nor an archive; point it at {expected}")
    return root


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


class ImageFile(NamedTuple):
    """One image file found under a data root: its path, its id (path relative to the root, with
    ``/``), and the size and modification time that key the decoded-array cache."""

    path: str
    id: str
    size: int
    mtime_ns: int


def scan_images(folder: Path, root: Path) -> list[ImageFile]:
    """Image files below ``folder`` (recursively, hidden files and folders skipped), sorted by
    their path. Uses ``os.scandir`` rather than pathlib: a 60,000-file folder lists in a second."""
    base = os.path.relpath(folder, root).replace(os.sep, "/")
    prefix = "" if base == "." else base + "/"
    found: list[ImageFile] = []

    def walk(directory: str, relative: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    walk(entry.path, f"{relative}{entry.name}/")
                elif entry.is_file() and is_image_file(entry.name):
                    stat = entry.stat()
                    found.append(
                        ImageFile(entry.path, f"{relative}{entry.name}", stat.st_size, stat.st_mtime_ns)
                    )

    walk(str(folder), prefix)
    found.sort(key=lambda f: f.id.split("/"))
    return found


def images_in(folder: Path, root: Path) -> list[ImageFile]:
    """The image files below ``folder``, or an error naming an empty folder."""
    found = scan_images(folder, root)
    if not found:
        raise UserError(f"folder {folder} holds no image files ({FORMATS_HINT}); add images or remove it")
    return found


def fingerprint(files: list[ImageFile]) -> str:
    """Changes when any file is added, removed, renamed, replaced or edited."""
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f.id}\0{f.size}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()


def probe_channels(files: list[ImageFile], skip_bad: bool, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> int:
    """3 when any of a few evenly spaced files has colour, else 1."""
    if not files:
        return 3
    picks = np.unique(np.linspace(0, len(files) - 1, min(CHANNEL_PROBES, len(files))).astype(int))
    for i in picks:
        try:
            if native_channels(files[i].path, max_pixels) == 3:
                return 3
        except BadImageError:
            if not skip_bad:
                raise
    return 1


# --------------------------------------------------------------------------- decode or stream
@dataclass
class Decoded:
    """Images of a list of files: in memory (``images``) or left on disk (``images`` None)."""

    images: np.ndarray | None
    kept: np.ndarray  # positions (in the list given) of the images kept
    skipped: list[str]  # ids of unreadable files skipped with --skip-bad-images
    storage: str  # one line for the log: where the images live and where they came from


def estimated_bytes(n: int, cfg: DataConfig, channels: int) -> int:
    return n * cfg.image_size * cfg.image_size * channels


def decode_files(files: list[ImageFile], cfg: DataConfig, channels: int, dataset: str, root: Path) -> Decoded:
    """Decode ``files`` into one uint8 array (cached), or leave them on disk when too large.

    A corrupt file stops with its name, or, with ``data.skip_bad_images``, is left out and named
    in ``skipped``. A cached array remembers the files it left out, so a later run without
    ``--skip-bad-images`` still stops at them.
    """
    n = len(files)
    size_mb = estimated_bytes(n, cfg, channels) / 2**20
    if size_mb > cfg.max_memory_mb:
        return Decoded(
            images=None,
            kept=np.arange(n),
            skipped=[],
            storage=f"streamed from disk ({n:,} files, {size_mb:,.0f} MB decoded > data.max_memory_mb "
            f"{cfg.max_memory_mb:,})",
        )
    cache_file = array_cache_path(cfg, dataset, key_of(root.resolve(), fingerprint(files)), channels)
    stored = load_arrays(cache_file)
    if stored is not None and {"images", "kept", "skipped"} <= stored.keys():
        skipped = [str(s) for s in stored["skipped"]]
        if skipped and not cfg.skip_bad_images:
            load_image(root / skipped[0], cfg.image_size, channels, cfg.max_image_pixels)  # raises, naming it
        return Decoded(
            images=stored["images"],
            kept=stored["kept"].astype(np.int64),
            skipped=skipped,
            storage=f"in memory ({size_mb:,.0f} MB), loaded from cache {cache_file}",
        )
    images = np.empty((n, cfg.image_size, cfg.image_size, channels), np.uint8)
    kept: list[int] = []
    skipped = []
    bar = tqdm(files, desc=f"decoding {n:,} images (once; cached after)", disable=None, leave=False)
    for i, f in enumerate(bar):
        try:
            images[len(kept)] = load_image(f.path, cfg.image_size, channels, cfg.max_image_pixels)
        except BadImageError:
            if not cfg.skip_bad_images:
                raise
            skipped.append(f.id)
            continue
        kept.append(i)
    images = images[: len(kept)]
    kept_array = np.asarray(kept, dtype=np.int64)
    saved = save_arrays(
        cache_file, {"images": images, "kept": kept_array, "skipped": np.asarray(skipped, dtype=str)}
    )
    where = f"cached in {cache_file}" if saved else "cache not writable"
    return Decoded(
        images=images, kept=kept_array, skipped=skipped, storage=f"in memory ({size_mb:,.0f} MB), {where}"
    )


def image_set_from_files(
    files: list[ImageFile],
    class_ids: np.ndarray,
    cfg: DataConfig,
    channels: int,
    dataset: str,
    root: Path,
    groups: list[str] | None = None,
    masks: list[str | None] | None = None,
) -> tuple[ImageSet, Decoded]:
    """One :class:`ImageSet` of ``files`` (in memory or file-backed), unreadable files left out."""
    decoded = decode_files(files, cfg, channels, dataset, root)
    keep = decoded.kept

    def pick(values):
        return None if values is None else [values[i] for i in keep]

    image_set = ImageSet(
        class_ids=np.asarray(class_ids, dtype=np.int64)[keep],
        images=decoded.images,
        paths=[files[i].path for i in keep],
        groups=pick(groups),
        masks=pick(masks),
        ids=[files[i].id for i in keep],
    )
    return image_set, decoded


def storage_info(decoded: Decoded) -> dict:
    """The :class:`SplitInfo` fields of how decoded files are held and which were skipped."""
    return {
        "storage": decoded.storage,
        "skipped_bad_images": len(decoded.skipped),
        "skipped_files": decoded.skipped[:20],
    }


# --------------------------------------------------------------------------- class-labelled folders
def class_folder_source(
    cfg: DataConfig,
    root: Path,
    dataset: str,
    class_names: list[str] | None = None,
    default_abnormal_class: str | None = None,
) -> LabelledSource:
    """A :class:`LabelledSource` from ``root/train/<class>`` and ``root/test/<class>`` folders.

    ``class_names`` fixes the classes and their order (CIFAR-10); by default they are the class
    folders found, sorted by name.
    """
    pools = {}
    for part in ("train", "test"):
        folders = subfolders(root / part)
        if not folders:
            raise UserError(
                f"folder {root / part} has no class sub-folders; expected {part}/<class>/<images>"
            )
        pools[part] = {f.name: f for f in folders}
    found = sorted(set(pools["train"]) | set(pools["test"]))
    if class_names is None:
        class_names = found
    else:
        unknown = [name for name in found if name not in class_names]
        if unknown:
            raise UserError(
                f"{root} has class folders {', '.join(unknown)} that {dataset} does not have; "
                f"its classes are: {', '.join(class_names)}"
            )
    files: list[ImageFile] = []
    class_ids: list[int] = []
    in_test: list[bool] = []
    for part in ("train", "test"):
        for class_id, name in enumerate(class_names):
            if name not in pools[part]:
                continue
            found_files = images_in(pools[part][name], root)
            files += found_files
            class_ids += [class_id] * len(found_files)
            in_test += [part == "test"] * len(found_files)
    return _labelled_source(
        cfg, root, dataset, class_names, files, class_ids, in_test, default_abnormal_class
    )


def _labelled_source(
    cfg: DataConfig,
    root: Path,
    dataset: str,
    class_names: list[str],
    files: list[ImageFile],
    class_ids: list[int],
    in_test: list[bool],
    default_abnormal_class: str | None = None,
    split: str | None = None,
) -> LabelledSource:
    channels = cfg.channels or probe_channels(files, cfg.skip_bad_images, cfg.max_image_pixels)
    everything, decoded = image_set_from_files(files, np.asarray(class_ids), cfg, channels, dataset, root)
    is_test = np.asarray(in_test, dtype=bool)[decoded.kept]
    return LabelledSource(
        name=dataset,
        class_names=list(class_names),
        train=everything.subset(np.flatnonzero(~is_test)),
        test=everything.subset(np.flatnonzero(is_test)),
        channels=channels,
        default_abnormal_class=default_abnormal_class,
        # Files come class after class: not the data set's original order (data.splits).
        info=SplitInfo(root=str(root), split=split, **storage_info(decoded)),
    )


def unsplit_class_source(cfg: DataConfig, root: Path, dataset: str) -> LabelledSource:
    """``root/<class>/*`` without train/test: each class split 80:20, seeded by data.split_seed."""
    class_names = [f.name for f in subfolders(root)]
    rng = np.random.default_rng(cfg.split_seed)
    files: list[ImageFile] = []
    class_ids: list[int] = []
    in_test: list[bool] = []
    for class_id, name in enumerate(class_names):
        found = images_in(root / name, root)
        if len(found) < 2:
            raise UserError(
                f"class folder {root / name} holds {len(found)} image; each class needs at least 2 "
                "to be split into train and test"
            )
        n_test = max(1, int(round(TEST_FRACTION * len(found))))
        test_positions = np.zeros(len(found), dtype=bool)
        test_positions[rng.permutation(len(found))[:n_test]] = True
        files += found
        class_ids += [class_id] * len(found)
        in_test += test_positions.tolist()
    split = f"each class split {1 - TEST_FRACTION:.0%}:{TEST_FRACTION:.0%} (seed {cfg.split_seed})"
    return _labelled_source(cfg, root, dataset, class_names, files, class_ids, in_test, split=split)


# --------------------------------------------------------------------------- the reference layout
def is_reference_layout(root: Path) -> bool:
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        return False
    names = [f.name for part in ("train", "test") for f in subfolders(root / part)]
    return bool(names) and all(REFERENCE_NAME.match(name) for name in names)


def reject_class_choice(cfg: DataConfig, what: str) -> None:
    if cfg.abnormal_class is not None or cfg.normal_class is not None:
        option = "--abnormal-class" if cfg.abnormal_class is not None else "--normal-class"
        raise UserError(f"{what} says which images are normal and abnormal itself; drop {option}")


def anomaly_group(folder_name: str, file_id: str) -> str:
    """The kind of an abnormal image of the reference layout: the sub-folder of its abnormal
    folder that holds it (``test/1.abnormal/knife/001.png`` is a knife), else the folder's name.
    The paper's X-ray table reports AUROC per such kind (Table II)."""
    parts = file_id.split("/")
    return parts[2] if len(parts) > 3 else folder_name


def reference_splits(cfg: DataConfig, root: Path, dataset: str = "folder") -> Splits:
    """The official code's custom layout: train/0.normal; test/0.normal and test/1.abnormal."""
    reject_class_choice(cfg, f"{root} (the reference layout train/0.normal, test/1.abnormal)")
    folders = {part: {f.name: f for f in subfolders(root / part)} for part in ("train", "test")}

    def kind(name: str) -> str:
        return REFERENCE_NAME.match(name).group(1)

    for name, folder in folders["train"].items():
        if kind(name) == "abnormal" and scan_images(folder, root):
            raise UserError(
                f"{folder} holds abnormal images, but training uses normal images only; move them to "
                f"{root / 'test' / name}"
            )
    if not any(kind(name) == "normal" for name in folders["train"]):
        raise UserError(
            f"{root / 'train'} has no normal folder (0.normal); it needs the normal training images"
        )
    if not folders["test"]:
        raise UserError(f"{root / 'test'} has no 0.normal or 1.abnormal folder")
    files: list[ImageFile] = []
    labels: list[int] = []
    groups: list[str] = []
    in_test: list[bool] = []
    for part in ("train", "test"):
        for name, folder in folders[part].items():
            if part == "train" and kind(name) == "abnormal":
                continue
            found = images_in(folder, root)
            files += found
            labels += [int(kind(name) == "abnormal")] * len(found)
            groups += [anomaly_group(name, f.id) if kind(name) == "abnormal" else name for f in found]
            in_test += [part == "test"] * len(found)
    channels = cfg.channels or probe_channels(files, cfg.skip_bad_images, cfg.max_image_pixels)
    labels_array = np.asarray(labels, dtype=np.int64)
    everything, decoded = image_set_from_files(
        files, labels_array, cfg, channels, dataset, root, groups=groups
    )
    everything = everything.with_labels(labels_array[decoded.kept])
    is_test = np.asarray(in_test, dtype=bool)[decoded.kept]
    train = everything.subset(np.flatnonzero(~is_test))
    evaluation = everything.subset(np.flatnonzero(is_test))
    if len(train) == 0:
        raise UserError(f"{root / 'train'} has no readable normal training images")
    info = SplitInfo(
        dataset=dataset,
        root=str(root),
        class_names=["normal", "abnormal"],
        setting="reference layout (train/0.normal, test/0.normal, test/1.abnormal)",
        normal_classes=sorted({g for g, label in zip(groups, labels, strict=True) if label == 0}),
        abnormal_classes=sorted({g for g, label in zip(groups, labels, strict=True) if label == 1}),
        evaluation_pool=pool_counts(evaluation),
        # The official code reads this layout itself, in the same file order (ImageFolder's).
        original_order=True,
        **storage_info(decoded),
    )
    return apply_protocol(train, evaluation, cfg, channels, info)


# --------------------------------------------------------------------------- the folder reader
FOLDER_EXPECTED = (
    "a folder with train/<class>/ and test/<class>/, or <class>/ folders, or the reference layout"
)


def read_folder(cfg: DataConfig) -> LabelledSource | Splits:
    """``--dataset folder``: the layout is recognised from the folder names (module docstring)."""
    root = resolve_root(cfg, "folder", FOLDER_EXPECTED)
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, missing = ("train", "test") if has_train else ("test", "train")
        raise UserError(f"{root} has {present}/ but no {missing}/; add it, or use <class>/ folders only")
    if has_train:
        if is_reference_layout(root):
            return reference_splits(cfg, root)
        return class_folder_source(cfg, root, "folder")
    if not subfolders(root):
        raise UserError(f"{root} has no sub-folders; expected {FOLDER_EXPECTED}")
    return unsplit_class_source(cfg, root, "folder")

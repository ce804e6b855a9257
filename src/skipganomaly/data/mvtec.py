"""MVTec AD (Bergmann et al., CVPR 2019): one category's folder, with its own normal/abnormal split.

Layout of ``--data-root`` (a category folder such as ``bottle/``, a folder holding exactly one
category, or an archive of either)::

    train/good/*                       normal training images
    test/good/*                        normal test images
    test/<defect>/*                    abnormal test images, one folder per defect type
    ground_truth/<defect>/<name>_mask.png   optional pixel masks of the abnormal test images

MVTec 3D-AD categories (Bergmann et al., VISAPP 2022) read as they are unpacked: each image folder
then holds ``rgb/`` (read), ``xyz/`` (point clouds, ignored) and, under ``test/<defect>``, ``gt/``
(the masks, same file names). Only the RGB images are used; 3D-AD's own ``validation/good`` is not
read, as the protocol carves its validation normals from ``train/good`` for every data set.

The labelled evaluation pool is ``test/``; the protocol then splits it (``val-split``: stratified
by defect type, so validation and test each get a share of every defect) or uses it whole.
Image labels are 0 (good) and 1 (any defect); the defect type of each image is kept as its group
(``ImageSet.groups``, the ``class`` column of ``scores.csv``), and its mask's path, when there is
one, as its mask: pixel AUROC is then reported beside image AUROC in ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..specs.config import DataConfig
from ..specs.errors import UserError
from .base import SplitInfo, Splits, pool_counts
from .folders import (
    ImageFile,
    image_set_from_files,
    images_in,
    probe_channels,
    reject_class_choice,
    resolve_root,
    storage_info,
    subfolders,
)
from .splits import apply_protocol

GOOD = "good"
EXPECTED = (
    "an MVTec AD category folder (train/good, test/good, test/<defect>, optional ground_truth/)"
    " or an MVTec 3D-AD one"
)


def find_category(root: Path) -> Path:
    """``root`` itself when it is a category folder, else its single category sub-folder."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return root
    categories = [f for f in subfolders(root) if (f / "train").is_dir()]
    if len(categories) == 1:
        return categories[0]
    if categories:
        names = ", ".join(f.name for f in categories)
        raise UserError(
            f"{root} holds several MVTec AD categories ({names}); point --data-root at one of them"
        )
    raise UserError(f"{root} is not {EXPECTED}")


def image_folder(category: Path, part: str, name: str) -> Path:
    """Where one folder's images are: MVTec 3D-AD keeps them in ``rgb/``, beside the point clouds
    and masks that must not be read as images."""
    folder = category / part / name
    return folder / "rgb" if (folder / "rgb").is_dir() else folder


def mask_path(category: Path, defect: str, image: Path) -> str | None:
    """The ground-truth mask of one abnormal test image, when the data set has it."""
    folder = category / "ground_truth" / defect
    candidates = [folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png"]
    if image.parent.name == "rgb":  # MVTec 3D-AD: test/<defect>/gt/<name>.png
        candidates.append(image.parent.parent / "gt" / f"{image.stem}.png")
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return None


def read_mvtec(cfg: DataConfig) -> Splits:
    category = find_category(resolve_root(cfg, "mvtec", EXPECTED))
    reject_class_choice(cfg, f"MVTec AD ({category})")
    good_train = category / "train" / GOOD
    if not good_train.is_dir():
        raise UserError(f"{good_train} does not exist; MVTec AD trains on the normal images in train/good")
    if not (category / "test").is_dir():
        raise UserError(
            f"{category / 'test'} does not exist; MVTec AD evaluates on test/good and test/<defect>"
        )
    defects = [f.name for f in subfolders(category / "test") if f.name != GOOD]
    group_names = [GOOD, *defects]
    files: list[ImageFile] = []
    groups: list[str] = []
    masks: list[str | None] = []
    in_test: list[bool] = []
    for part, name in [("train", GOOD)] + [("test", name) for name in group_names]:
        folder = image_folder(category, part, name)
        if part == "test" and name == GOOD and not folder.is_dir():
            continue
        for f in images_in(folder, category):
            files.append(f)
            groups.append(name)
            masks.append(None if name == GOOD else mask_path(category, name, Path(f.path)))
            in_test.append(part == "test")
    class_ids = np.asarray([group_names.index(g) for g in groups], dtype=np.int64)
    channels = cfg.channels or probe_channels(files, cfg.skip_bad_images, cfg.max_image_pixels)
    everything, decoded = image_set_from_files(
        files, class_ids, cfg, channels, "mvtec", category, groups=groups, masks=masks
    )
    everything = everything.with_labels((everything.class_ids != 0).astype(np.int64))
    is_test = np.asarray(in_test, dtype=bool)[decoded.kept]
    train = everything.subset(np.flatnonzero(~is_test))
    evaluation = everything.subset(np.flatnonzero(is_test))
    if len(train) == 0:
        raise UserError(f"{good_train} has no readable normal training images")
    n_masks = sum(m is not None for m in evaluation.masks)
    info = SplitInfo(
        dataset="mvtec",
        category=category.name,
        root=str(category),
        class_names=group_names,
        setting="MVTec AD (train/good normal; test/good and test/<defect>)",
        normal_classes=[GOOD],
        abnormal_classes=defects,
        evaluation_pool=pool_counts(evaluation),
        masks=n_masks,
        original_order=False,  # folder by folder: the paper protocol mixes the defect types
        **storage_info(decoded),
    )
    return apply_protocol(train, evaluation, cfg, channels, info)

"""Containers passed between the data steps: files -> source -> protocol splits -> batches.

* :class:`ImageSet`: images held in memory as one uint8 array (N, H, W, C), or as file paths that
  are decoded when batches are drawn (for folders too large for memory), with per-image class ids,
  anomaly labels (0 normal, 1 abnormal), optional pixel masks, group names (MVTec defect types)
  and stable per-image ids (e.g. ``test/cat/0001.jpg``, ``mnist:train:00017``) that name every
  image independently of how the sets were split, so tests can prove the splits disjoint.
* :class:`LabelledSource`: what a reader returns for a class-labelled data set: its own train and
  test pools with class ids (CIFAR-10, MNIST, class folders, digits).
* :class:`Splits`: what a protocol returns: train (normal images only), validation and test,
  with a :class:`SplitInfo` saying what was read and how it was split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..specs.protocols import PAPER


@dataclass
class ImageSet:
    """A list of images with their class ids and (after a protocol) anomaly labels."""

    class_ids: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    labels: np.ndarray | None = None
    masks: list[str | None] | None = None
    groups: list[str] | None = None
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64)
        if self.images is None and self.paths is None:
            raise ValueError("an ImageSet needs images or paths")
        n = len(self.class_ids)
        if self.images is not None and len(self.images) != n:
            raise ValueError("images and class_ids differ in length")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError("paths and class_ids differ in length")
        if self.ids is not None and len(self.ids) != n:
            raise ValueError("ids and class_ids differ in length")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, indices: np.ndarray | list[int]) -> ImageSet:
        idx = np.asarray(indices, dtype=np.int64)

        def pick(values):
            return None if values is None else [values[i] for i in idx]

        return ImageSet(
            class_ids=self.class_ids[idx],
            images=None if self.images is None else self.images[idx],
            paths=pick(self.paths),
            labels=None if self.labels is None else self.labels[idx],
            masks=pick(self.masks),
            groups=pick(self.groups),
            ids=pick(self.ids),
        )

    def with_labels(self, labels: np.ndarray | int) -> ImageSet:
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(self),)).copy()
        return ImageSet(self.class_ids, self.images, self.paths, labels, self.masks, self.groups, self.ids)

    def label_counts(self) -> dict[str, int]:
        """Images in total, normal (label 0) and abnormal (label 1); no labels counts as normal."""
        labels = self.labels if self.labels is not None else np.zeros(len(self), np.int64)
        return {
            "total": int(len(self)),
            "normal": int((labels == 0).sum()),
            "abnormal": int((labels == 1).sum()),
        }

    @staticmethod
    def concatenate(parts: list[ImageSet]) -> ImageSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        in_memory = {p.in_memory for p in parts}
        if len(in_memory) != 1:
            raise ValueError("cannot mix in-memory and file-backed image sets")

        def joined(name):
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                return None
            return [item for v in values for item in v]

        return ImageSet(
            class_ids=np.concatenate([p.class_ids for p in parts]),
            images=np.concatenate([p.images for p in parts]) if parts[0].in_memory else None,
            paths=joined("paths"),
            labels=None
            if any(p.labels is None for p in parts)
            else np.concatenate([p.labels for p in parts]),
            masks=joined("masks"),
            groups=joined("groups"),
            ids=joined("ids"),
        )


@dataclass
class SplitInfo:
    """What was read and how it was split: printed at the start of a run, stored in checkpoints
    and metrics.json. A reader fills what it knows (where, how stored, images skipped); the
    protocol's split adds the classes, the setting, the evaluation pool and the protocol."""

    dataset: str | None = None
    setting: str | None = None  # "leave-one-class-out", "one-class", or the data set's own split
    protocol: str | None = None
    class_names: list[str] = field(default_factory=list)
    normal_classes: list[str] = field(default_factory=list)
    abnormal_classes: list[str] = field(default_factory=list)
    evaluation_pool: dict[str, int] | None = None  # {"normal": n, "abnormal": m} before the split
    root: str | None = None
    storage: str | None = None  # in memory, cached, streamed from disk ...
    format: str | None = None  # of the files found, where a reader accepts several
    category: str | None = None  # MVTec AD's category
    split: str | None = None  # how a folder without train/test was split into them
    masks: int = 0  # abnormal evaluation images with a ground-truth mask
    skipped_bad_images: int = 0
    skipped_files: list[str] = field(default_factory=list)  # the first few of them
    # Whether the reader's order is the data set's own (CIFAR-10 batches, MNIST idx, digits), which
    # the paper protocol keeps; class folders come class after class (official_evaluation_order).
    original_order: bool = False
    split_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SplitInfo:
        """Read a stored one; keys this version does not know are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def official_evaluation_order(evaluation: ImageSet, original_order: bool, seed: int) -> np.ndarray:
    """Positions of ``evaluation`` in the official code's test order.

    The official code scores with BatchNorm in training mode, so every image's score depends on
    the other images of its batch, and the order of the evaluation set is part of the result. Its
    CIFAR-10 test set is the normal test images in CIFAR-10's own test order (the nine classes come
    mixed), then the abnormal training images, then the abnormal test images, never shuffled. So:
    normal images first, then abnormal ones, each part in the pool's order (which puts the abnormal
    class's training images before its test images). When that order is not the data set's
    original one (``original_order`` False: class folders, whose files come class after class), a
    part holding images of several classes is shuffled with ``seed``, so that no batch is a single
    class; otherwise train-mode BatchNorm would normalise every class on its own (on CIFAR-10,
    automobile abnormal, one epoch, that moved the paper protocol's AUROC from the official code's
    0.79 to 0.45: docs/fidelity-check.md).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for label in (0, 1):
        part = np.flatnonzero(evaluation.labels == label)
        if not original_order and len(np.unique(evaluation.class_ids[part])) > 1:
            part = rng.permutation(part)
        parts.append(part)
    return np.concatenate(parts)


def anomaly_types(image_set: ImageSet, class_names: list[str]) -> list[str] | None:
    """The named kind of each image, for the paper's Table II layout (AUROC per anomaly type).

    An image's kind is its group where the reader keeps one (MVTec AD's defect folder, the
    reference layout's abnormal folder or the sub-folder below it), else its class's name (a
    one-class setting's abnormal classes, a ``folder`` set's ``test/<type>/``). None when the set
    holds fewer than two kinds of abnormal image: one kind's AUROC is the overall one.
    """
    if image_set.labels is None:
        return None
    if image_set.groups is not None:
        kinds = [str(g) for g in image_set.groups]
    else:
        kinds = [
            class_names[c] if 0 <= c < len(class_names) else str(c) for c in image_set.class_ids.tolist()
        ]
    abnormal = {k for k, label in zip(kinds, image_set.labels.tolist(), strict=True) if label == 1}
    return kinds if len(abnormal) >= 2 else None


def pool_counts(evaluation: ImageSet) -> dict[str, int]:
    """``SplitInfo.evaluation_pool`` of a labelled evaluation pool."""
    counts = evaluation.label_counts()
    return {"normal": counts["normal"], "abnormal": counts["abnormal"]}


@dataclass
class LabelledSource:
    """A class-labelled data set as its reader found it: its own train and test pools."""

    name: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    channels: int
    default_abnormal_class: str | None = None
    info: SplitInfo = field(default_factory=SplitInfo)


def source_from_arrays(
    name: str,
    class_names: list[str],
    arrays: dict[str, np.ndarray],
    ids: dict[str, list[str]],
    channels: int,
    info: SplitInfo,
) -> LabelledSource:
    """A :class:`LabelledSource` from decoded ``{part}_images`` and ``{part}_labels`` arrays of
    the parts ``train`` and ``test``, with each part's image ids (the array readers' shared end)."""
    train, test = (
        ImageSet(class_ids=arrays[f"{part}_labels"], images=arrays[f"{part}_images"], ids=ids[part])
        for part in ("train", "test")
    )
    return LabelledSource(
        name=name, class_names=list(class_names), train=train, test=test, channels=channels, info=info
    )


@dataclass
class Splits:
    """The three sets a protocol produces, and how they were made (for logs and reports)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    protocol: str
    channels: int
    info: SplitInfo = field(default_factory=SplitInfo)
    # The labelled evaluation pool before the protocol split it (val-split: val + test), in its
    # stored order, so the paper protocol's evaluation can be scored beside any protocol.
    pool: ImageSet | None = None
    _paper_evaluation: ImageSet | None = field(default=None, init=False, repr=False, compare=False)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: getattr(self, name).label_counts() for name in ("train", "val", "test")}

    def paper_evaluation_set(self) -> ImageSet:
        """The set the ``paper`` protocol evaluates on: the evaluation pool in the official code's
        order (:func:`official_evaluation_order`), normal images first.

        Built once (its images tensor is cached on the set). Splits built without a pool fall back
        to validation + test when the validation part holds labelled anomalies (val-split), else
        test alone (normal-only).
        """
        if self._paper_evaluation is not None:
            return self._paper_evaluation
        if self.protocol == PAPER.name:
            chosen = self.test  # the paper protocol's own test set is this set already
        else:
            pool = self.pool
            if pool is None:
                val_labelled = self.val.labels is not None and bool((self.val.labels == 1).any())
                parts = [self.val, self.test] if val_labelled and self.val is not self.test else [self.test]
                pool = ImageSet.concatenate(parts)
            order = official_evaluation_order(pool, self.info.original_order, self.info.split_seed)
            chosen = pool.subset(order)
        self._paper_evaluation = chosen
        return chosen

    def describe(self) -> str:
        """The data lines printed at the start of a run: what was read, how it was split, counts."""
        c = self.counts()
        info = self.info
        fmt = "{:,}".format
        lines = [
            f"data: {info.dataset} ({info.setting}); normal: {', '.join(info.normal_classes or ['-'])}; "
            f"abnormal: {', '.join(info.abnormal_classes or ['-'])}",
        ]
        if info.storage:
            where = f" from {info.root}" if info.root else ""
            lines.append(f"images{where}: {info.storage}")
        if info.skipped_bad_images:
            named = ", ".join(info.skipped_files[:5])
            lines.append(
                f"skipped {fmt(info.skipped_bad_images)} unreadable images (--skip-bad-images): {named}"
            )
        pool = info.evaluation_pool
        if pool:
            lines.append(f"evaluation pool: {fmt(pool['normal'])}:{fmt(pool['abnormal'])} (normal:abnormal)")
        lines.append(
            f"protocol {self.protocol}: train {fmt(c['train']['total'])} normal images; "
            f"validation {fmt(c['val']['normal'])}:{fmt(c['val']['abnormal'])}; "
            f"test {fmt(c['test']['normal'])}:{fmt(c['test']['abnormal'])} (normal:abnormal)"
        )
        if info.masks:
            lines.append(
                f"ground-truth masks: {fmt(info.masks)} abnormal evaluation images (pixel AUROC reported)"
            )
        return "\n".join(lines)

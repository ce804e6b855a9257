"""Containers passed between the data steps: files -> source -> protocol splits -> batches.

* :class:`ImageSet`: images held in memory as one uint8 array (N, H, W, C), or as file paths that
  are decoded when batches are drawn (for folders too large for memory), with per-image class ids,
  anomaly labels (0 normal, 1 abnormal), optional pixel masks, group names (MVTec defect types)
  and stable per-image ids (e.g. ``test/cat/0001.jpg``, ``mnist:train:00017``) that name every
  image independently of how the sets were split, so tests can prove the splits disjoint.
* :class:`LabelledSource`: what a reader returns for a class-labelled data set: its own train and
  test pools with class ids (CIFAR-10, MNIST, class folders, digits).
* :class:`Splits`: what a protocol returns: train (normal images only), validation and test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
class LabelledSource:
    """A class-labelled data set as its reader found it: its own train and test pools."""

    name: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    channels: int
    default_abnormal_class: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Splits:
    """The three sets a protocol produces, and how they were made (for logs and reports)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    protocol: str
    channels: int
    info: dict[str, Any] = field(default_factory=dict)
    # The labelled evaluation pool before the protocol split it (val-split: val + test), in its
    # stored order, so the paper protocol's evaluation can be scored beside any protocol.
    pool: ImageSet | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        def count(images: ImageSet) -> dict[str, int]:
            labels = images.labels if images.labels is not None else np.zeros(len(images), np.int64)
            return {
                "total": int(len(images)),
                "normal": int((labels == 0).sum()),
                "abnormal": int((labels == 1).sum()),
            }

        return {"train": count(self.train), "val": count(self.val), "test": count(self.test)}

"""The split rule of every protocol: how a labelled source becomes train / validation / test sets.

What each protocol means (its notes, titles, scoring) lives in :mod:`skipganomaly.specs.protocols`; this
module applies its ``validation`` rule. It sits in the data layer because every reader calls it.

Which images are normal (Sec. IV-A of the paper):
* leave one class out (``--abnormal-class``): train on the training images of every other
  class; evaluate on their test images plus all images (train and test) of the abnormal class.
  CIFAR-10 thus gives 45,000 training images and a 9,000:6,000 evaluation pool.
* one class (``--normal-class``): train on that class's training images; evaluate on the whole
  test pool, the other classes being abnormal.

How the model is selected (``data.protocol``); model selection and thresholds never see test:
* ``val-split`` (default): a stratified, seeded split of the evaluation pool into validation and
  test parts; the epoch and the threshold are chosen on validation, metrics reported on test.
* ``normal-only``: no labelled anomalies are used for selection: a held-out slice of the normal
  training images is the validation set; the epoch is chosen on their mean anomaly score and the
  threshold at a quantile of their scores. Test is the whole evaluation pool.
* ``paper``: the official code's procedure, kept only to show where published numbers come from:
  validation *is* the test set (the best epoch is chosen on it), in the official code's order
  (below), scored with BatchNorm in training mode in batches of the training batch size.
  Optimistic by construction; marked so wherever it is shown.

The official evaluation order (:func:`official_evaluation_order`). The official code scores with
BatchNorm in training mode, so every image's score depends on the other images of its batch, and
the order of the evaluation set is part of the result. Its CIFAR-10 test set is the normal test
images in CIFAR-10's own test order (the nine classes come mixed), then the abnormal training
images, then the abnormal test images, never shuffled, in batches of the training batch size
without ``drop_last``. We build the same order: normal images first, then abnormal ones (the
training images of the abnormal class before its test images), each part in the data set's
original order where the reader knows it (``SplitInfo.original_order``: CIFAR-10 python batches,
MNIST idx files, scikit-learn's digits, the reference layout). Where it does not (class folders,
whose files come class after class; MVTec AD), a part holding several classes is shuffled, seeded
by ``data.split_seed``, so its
classes come mixed as in the original; a part of one class keeps the reader's order. Without
this, class-folder data gave batches of one class each, and train-mode BatchNorm normalised every
class on its own: on CIFAR-10 (automobile abnormal, one epoch, full width) that moved the paper
protocol's AUROC from the official code's 0.79 to 0.45 (docs/fidelity-check.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.model_selection import train_test_split

from ..specs.config import DataConfig
from ..specs.errors import UserError
from ..specs.protocols import PROTOCOL_SPECS
from .base import ImageSet, LabelledSource, SplitInfo, Splits, official_evaluation_order, pool_counts

NORMAL_ONLY_VAL_FRACTION = 0.1


def resolve_class(source: LabelledSource, name: str, option: str) -> int:
    """Class name (or index) -> class id, or a UserError listing the valid names."""
    if name in source.class_names:
        return source.class_names.index(name)
    if name.isdigit() and int(name) < len(source.class_names) and source.class_names[int(name)] != name:
        return int(name)
    valid = ", ".join(source.class_names)
    raise UserError(f"{option} {name!r} is not a class of {source.name}; choose one of: {valid}")


def _stratified_split(
    n: int, strata: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) with ``fraction`` of each stratum in ``first``; seeded."""
    index = np.arange(n)
    for stratify in (strata, None):
        try:
            first, second = train_test_split(index, train_size=fraction, random_state=seed, stratify=stratify)
            return np.sort(first), np.sort(second)
        except ValueError:
            continue
    raise UserError(
        f"cannot split {n} images {fraction:.0%}:{1 - fraction:.0%} (validation and the rest); "
        "the data set is too small"
    )


def _pools(source: LabelledSource, cfg: DataConfig) -> tuple[ImageSet, ImageSet, SplitInfo]:
    """(normal training images, labelled evaluation pool, description)."""
    if cfg.normal_class is not None:
        normal = resolve_class(source, cfg.normal_class, "--normal-class")
        train = source.train.subset(np.flatnonzero(source.train.class_ids == normal)).with_labels(0)
        evaluation = source.test.with_labels((source.test.class_ids != normal).astype(np.int64))
        normal_names = [source.class_names[normal]]
        abnormal_names = [n for i, n in enumerate(source.class_names) if i != normal]
        setting = "one-class"
    else:
        name = cfg.abnormal_class if cfg.abnormal_class is not None else source.default_abnormal_class
        if name is None:
            valid = ", ".join(source.class_names)
            raise UserError(f"{source.name} needs --abnormal-class or --normal-class; classes: {valid}")
        abnormal = resolve_class(source, name, "--abnormal-class")
        train = source.train.subset(np.flatnonzero(source.train.class_ids != abnormal)).with_labels(0)
        normal_test = source.test.subset(np.flatnonzero(source.test.class_ids != abnormal)).with_labels(0)
        abnormal_all = ImageSet.concatenate(
            [
                source.train.subset(np.flatnonzero(source.train.class_ids == abnormal)),
                source.test.subset(np.flatnonzero(source.test.class_ids == abnormal)),
            ]
        ).with_labels(1)
        evaluation = ImageSet.concatenate([normal_test, abnormal_all])
        normal_names = [n for i, n in enumerate(source.class_names) if i != abnormal]
        abnormal_names = [source.class_names[abnormal]]
        setting = "leave-one-class-out"
    if len(train) == 0:
        raise UserError(_no_normal_training_images(source, cfg))
    info = dataclasses.replace(
        source.info,
        dataset=source.name,
        class_names=list(source.class_names),
        setting=setting,
        normal_classes=normal_names,
        abnormal_classes=abnormal_names,
        evaluation_pool=pool_counts(evaluation),
    )
    return train, evaluation, info


def _no_normal_training_images(source: LabelledSource, cfg: DataConfig) -> str:
    """One line: where, the choice made, and the training images found per class."""
    where = f"{source.name} in {source.info.root}" if source.info.root else source.name
    choice = (
        f"--normal-class {cfg.normal_class}"
        if cfg.normal_class is not None
        else f"--abnormal-class {cfg.abnormal_class if cfg.abnormal_class is not None else source.default_abnormal_class}"
    )
    counts = np.bincount(source.train.class_ids, minlength=len(source.class_names))
    found = ", ".join(f"{name} {int(n)}" for name, n in zip(source.class_names, counts, strict=True))
    return (
        f"{where} has no normal training images for {choice}; training images per class found: {found}; "
        "choose another class or add training images of the normal classes"
    )


def apply_protocol(
    train: ImageSet, evaluation: ImageSet, cfg: DataConfig, channels: int, info: SplitInfo
) -> Splits:
    """Split normal training images and a labelled evaluation pool by ``cfg.protocol``'s
    ``validation`` rule (:class:`~skipganomaly.specs.protocols.ProtocolSpec`)."""
    protocol = cfg.protocol
    if protocol not in PROTOCOL_SPECS:  # validated in config
        raise UserError(f"unknown protocol {protocol!r}")
    validation = PROTOCOL_SPECS[protocol].validation
    if validation == "evaluation pool":
        if len(np.unique(evaluation.labels)) < 2:
            raise UserError(
                "protocol val-split needs normal and abnormal evaluation images; use --protocol normal-only"
            )
        strata = evaluation.class_ids * 2 + evaluation.labels
        val_idx, test_idx = _stratified_split(len(evaluation), strata, cfg.val_fraction, cfg.split_seed)
        val, test = evaluation.subset(val_idx), evaluation.subset(test_idx)
    elif validation == "normal hold-out":
        val_idx, train_idx = _stratified_split(
            len(train), train.class_ids, NORMAL_ONLY_VAL_FRACTION, cfg.split_seed
        )
        val, train, test = train.subset(val_idx), train.subset(train_idx), evaluation
    elif validation == "test set":
        order = official_evaluation_order(evaluation, info.original_order, cfg.split_seed)
        test = evaluation.subset(order)
        val = test
    else:
        raise ValueError(f"protocol {protocol}: no split rule for validation {validation!r}")
    info = dataclasses.replace(info, protocol=protocol, split_seed=cfg.split_seed)
    return Splits(
        train=train, val=val, test=test, protocol=protocol, channels=channels, info=info, pool=evaluation
    )


def make_splits(source: LabelledSource, cfg: DataConfig) -> Splits:
    train, evaluation, info = _pools(source, cfg)
    return apply_protocol(train, evaluation, cfg, source.channels, info)

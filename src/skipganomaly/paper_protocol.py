"""The ``paper`` protocol's evaluation scored beside any other protocol, every epoch.

The official code evaluates on the whole evaluation pool in its own order (normal images first,
in the data set's original order, so their classes come mixed; see :mod:`.data.protocols`), with
BatchNorm in training mode and the training batch size, and reports the best AUROC over epochs.
Scoring that evaluation after each epoch of an honest run (``eval.paper_each_epoch``) gives the
optimistic figure from the *same* training as the honest one, without a second
training: scoring restores the BatchNorm buffers and draws no random numbers, so the training
trajectory is unchanged, and a ``val-split`` run's paper figures equal those of a separate
``--protocol paper`` run with the same seed (both train on the same normal images).
"""

from __future__ import annotations

import math
from typing import Any

from .config import Config
from .data.base import ImageSet, Splits
from .data.protocols import official_evaluation_order
from .evaluate import score_set, scoring_kwargs
from .metrics import detection_summary

OPTIMISTIC_NOTE = (
    "OPTIMISTIC: the paper protocol (the official code's procedure): the whole evaluation pool in the "
    "official order scored with BatchNorm in training mode, the epoch chosen on that same set"
)


def paper_evaluation_set(splits: Splits) -> ImageSet:
    """The set the ``paper`` protocol evaluates on: the evaluation pool in the official code's
    order (:func:`~.data.protocols.official_evaluation_order`), normal images first.

    Built once per :class:`Splits` and cached on it (its images tensor is cached on the set).
    Readers that build :class:`Splits` without a pool fall back to validation + test when the
    validation part holds labelled anomalies (val-split), else test alone (normal-only).
    """
    cached = getattr(splits, "_paper_evaluation", None)
    if cached is not None:
        return cached
    if splits.protocol == "paper":
        chosen = splits.test
    else:
        pool = splits.pool
        if pool is None:
            val_labelled = splits.val.labels is not None and bool((splits.val.labels == 1).any())
            parts = (
                [splits.val, splits.test] if val_labelled and splits.val is not splits.test else [splits.test]
            )
            pool = ImageSet.concatenate(parts)
        original = bool(splits.info.get("original_order"))
        chosen = pool.subset(official_evaluation_order(pool, original, splits.info.get("split_seed", 0)))
    splits._paper_evaluation = chosen
    return chosen


def score_paper_protocol(model, splits: Splits, config: Config, device, amp_dtype) -> dict[str, float]:
    """AUROC, AUPRC, best F1 and EER of the paper protocol's evaluation for the current weights."""
    kwargs = scoring_kwargs(config, splits.channels, device, amp_dtype)
    kwargs.update(batchnorm_train=True, batch_size=config.data.batch_size)
    scored = score_set(model, paper_evaluation_set(splits), **kwargs)
    summary = detection_summary(scored.labels, scored.score)
    return {key: summary[key] for key in ("auroc", "auprc", "best_f1", "eer")}


def summarize_paper_protocol(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper figure of a run: the epoch with the best paper-protocol AUROC, or None when the
    run did not score the paper protocol each epoch."""
    scored = [h for h in history if h.get("paper") and not math.isnan(h["paper"]["auroc"])]
    if not scored:
        return None
    best = max(scored, key=lambda h: h["paper"]["auroc"])
    return dict(best["paper"], epoch=best["epoch"], note=OPTIMISTIC_NOTE)

"""The ``paper`` protocol's evaluation scored beside any other protocol, every epoch.

The official code evaluates on the whole evaluation pool in its own order (normal images first,
in the data set's original order, so their classes come mixed: ``data.base.official_evaluation_order``),
with BatchNorm in training mode and the training batch size, and reports the best AUROC over
epochs. Scoring that evaluation after each epoch of an honest run (``eval.paper_each_epoch``)
gives the optimistic figure from the *same* training as the honest one, without a second
training: scoring restores the BatchNorm buffers and draws no random numbers, so the training
trajectory is unchanged, and a ``val-split`` run's paper figures equal those of a separate
``--protocol paper`` run with the same seed (both train on the same normal images).
"""

from __future__ import annotations

import math
from typing import Any

from ..data.base import Splits
from ..scoring.engine import ScoringOptions, score_set
from ..scoring.metrics import detection_summary
from ..specs.config import Config
from ..specs.protocols import PAPER, PAPER_PROTOCOL_NOTE


def score_paper_protocol(model, splits: Splits, config: Config, device, amp_dtype) -> dict[str, float]:
    """AUROC, AUPRC, best F1 and EER of the paper protocol's evaluation for the current weights
    (``history[i]["paper"]`` of metrics.json)."""
    options = ScoringOptions.for_run(config, splits.channels, device, amp_dtype, PAPER.name)
    scored = score_set(model, splits.paper_evaluation_set(), options)
    summary = detection_summary(scored.labels, scored.score)
    return {key: summary[key] for key in ("auroc", "auprc", "best_f1", "eer")}


def summarize_paper_protocol(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper figure of a run (``paper_protocol`` of metrics.json): the epoch with the best
    paper-protocol AUROC, or None when the run did not score the paper protocol each epoch."""
    scored = [h for h in history if h.get("paper") and not math.isnan(h["paper"]["auroc"])]
    if not scored:
        return None
    best = max(scored, key=lambda h: h["paper"]["auroc"])
    return dict(best["paper"], epoch=best["epoch"], note=PAPER_PROTOCOL_NOTE)

"""The evaluation protocols: one :class:`ProtocolSpec` each, and where each part of them lives.

A protocol decides three things; its spec here is their one description, applied in three places:

* **the split**: where validation comes from (``validation``); the rule that applies it to a
  data set's normal training images and labelled evaluation pool is
  :func:`skipganomaly.data.splits.apply_protocol` (in the data layer, because every reader calls
  it), driven by these specs;
* **the scoring**: honest protocols score in eval mode, one image independent of the others;
  ``official_scoring`` means the official code's train-mode BatchNorm with the training batch
  size (:meth:`skipganomaly.scoring.engine.ScoringOptions.for_run` is the one place that applies it);
* **what is reported**: the notes and titles below, the paper protocol's evaluation beside an
  honest one (:mod:`skipganomaly.evaluation.paper`) and the ``metrics.json`` / ``scores.csv``
  assembly with :func:`skipganomaly.evaluation.record.evaluate_run`.

This module imports nothing heavy: the configuration reads the protocol names from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProtocolSpec:
    """What one protocol means, for the split, the scorer and every report."""

    name: str
    title: str  # in report tables: "val-split (honest)"
    note: str  # how the epoch and the threshold are chosen; in metrics.json and reports
    f1_note: str  # what the F1 column of a report means under this protocol
    # Where validation comes from: "evaluation pool" (a stratified split of the labelled
    # evaluation pool; test is the rest), "normal hold-out" (held-out normal training images;
    # test is the whole pool) or "test set" (validation is the test set itself).
    validation: str
    # Score as the official code does: BatchNorm in training mode (batch statistics, which leak
    # labels through the label-ordered batches) with the training batch size.
    official_scoring: bool = False

    @property
    def honest(self) -> bool:
        """Whether model selection and thresholds never see the test labels."""
        return self.validation != "test set"

    @property
    def optimistic(self) -> bool:
        return not self.honest


VAL_SPLIT = ProtocolSpec(
    name="val-split",
    title="val-split (honest)",
    note="epoch and threshold chosen on a validation split of the labelled evaluation data; "
    "metrics on the disjoint test split",
    f1_note="F1 at the threshold chosen on validation",
    validation="evaluation pool",
)
NORMAL_ONLY = ProtocolSpec(
    name="normal-only",
    title="normal-only (honest)",
    note="no labelled anomalies used for selection: for a standardised score (the improved and "
    "restoring presets) the epoch, the score's terms and the map are chosen on the synthetic "
    "validation (held-out normal images against synthetic anomalies of families training never "
    "sees); for the paper's score, the epoch with the lowest mean score of the held-out normal "
    "images; threshold at a quantile of their scores (eval.threshold, eval.target_fpr)",
    f1_note="F1 at a quantile of normal validation scores",
    validation="normal hold-out",
)
PAPER = ProtocolSpec(
    name="paper",
    title="paper protocol (OPTIMISTIC)",
    note="OPTIMISTIC: the official code's procedure; the epoch is chosen on the test set itself, "
    "scored with BatchNorm in training mode over the label-ordered test set (normal images first, then the abnormal ones) (batch statistics leak labels)",
    f1_note="F1 at the best threshold on the test set itself (optimistic)",
    validation="test set",
    official_scoring=True,
)

PROTOCOL_SPECS: dict[str, ProtocolSpec] = {p.name: p for p in (VAL_SPLIT, NORMAL_ONLY, PAPER)}
PROTOCOLS = tuple(PROTOCOL_SPECS)  # data.protocol's choices, in report order
HONEST_PROTOCOLS = tuple(p.name for p in PROTOCOL_SPECS.values() if p.honest)

# The two optimistic figures an honest run also records (metrics.json, docs/architecture.md):
# ``paper_protocol``, the paper protocol's evaluation scored beside it every epoch
# (eval.paper_each_epoch), at its best epoch; and ``paper_style``, the best test AUROC of the
# run's own test split over its epochs.
PAPER_PROTOCOL_NOTE = (
    "OPTIMISTIC: the paper protocol (the official code's procedure): the whole evaluation pool in the "
    "official order scored with BatchNorm in training mode, the epoch chosen on that same set"
)
BEST_TEST_EPOCH_NOTE = (
    "OPTIMISTIC: the best test AUROC over epochs (the epoch chosen on the test set), "
    "as the official code reports"
)

__all__ = [
    "ProtocolSpec",
    "PROTOCOL_SPECS",
    "PROTOCOLS",
    "HONEST_PROTOCOLS",
    "PAPER_PROTOCOL_NOTE",
    "BEST_TEST_EPOCH_NOTE",
    "VAL_SPLIT",
    "NORMAL_ONLY",
    "PAPER",
]

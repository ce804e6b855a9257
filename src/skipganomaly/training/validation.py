"""Each epoch's validation: the scoring weights scored on validation and test, after what the
improved score fits first (the feature bank of normal training images, the standardisation of the
score's terms and which of them count); the epoch's record in the history and its log line.

What is decided from the scores (normalisation, threshold, epoch selection, the terms' subset) is
:mod:`skipganomaly.scoring.decisions`; this module applies it to a run, every epoch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import Splits
from ..runtime import distributed
from ..runtime.distributed import DistributedContext
from ..runtime.threads import ThreadChooser
from ..scoring.decisions import choose_terms, fit_term_statistics, selection_text, standardize_terms
from ..scoring.engine import ScoredSet, ScoringOptions, feature_bank, score_splits
from ..scoring.metrics import auroc
from ..specs.config import Config


class Validation:
    """Scores a run's scoring weights on its validation and test splits, as its protocol says.

    ``bank_images``: the normal training images whose features a feature bank of the score holds
    (a score term's ``feature_bank``; :mod:`skipganomaly.specs.score_terms`), drawn once per run
    from the seed, or None when the model keeps no bank."""

    def __init__(
        self,
        config: Config,
        splits: Splits,
        device: torch.device,
        context: DistributedContext,
        thread_chooser: ThreadChooser,
        model: nn.Module,
    ):
        self.config = config
        self.splits = splits
        self.device = device
        self.context = context
        self.thread_chooser = thread_chooser
        self.bank_images = None
        bank = getattr(model, "feature_bank", None)
        if bank is not None:
            pick = np.random.default_rng(config.train.seed).choice(
                len(splits.train), len(bank), replace=False
            )
            self.bank_images = splits.train.subset(np.sort(pick))

    def score(
        self, model: nn.Module, amp_dtype: torch.dtype | None, calibrate: bool = False
    ) -> tuple[ScoredSet, ScoredSet, list[str] | None]:
        """Validation and test scores of ``model`` (sharded over the processes), and the score
        terms that count (None unless calibrated and the model sums terms).

        ``calibrate``: first fit what the improved score keeps besides weights, on this epoch's
        weights: the feature bank (normal training images) and then the standardisation of the
        score terms (normal validation images); the scores returned are the model's scores with
        them."""
        if self.context.enabled:
            distributed.average_buffers(model)  # one model on every rank, and in the checkpoint
        if self.device.type == "cpu":
            self.thread_chooser.apply()
        options = ScoringOptions.for_run(
            self.config, self.splits.channels, self.device, amp_dtype, self.splits.protocol
        )
        if calibrate and self.bank_images is not None:
            model.set_feature_bank(
                feature_bank(model, self.bank_images, options.replace(batchnorm_train=False))
            )
        val, test = score_splits(model, self.splits, options, context=self.context)
        if not (calibrate and val.terms is not None):
            return val, test, None
        mean, std = fit_term_statistics(val)
        weights = choose_terms(val, mean, std) if model.select_terms else np.ones(len(mean))
        model.set_term_statistics(
            torch.from_numpy(mean).float(),
            torch.from_numpy(std).float(),
            torch.from_numpy(weights).float(),
        )
        for scored in {id(val): val, id(test): test}.values():
            scored.score = standardize_terms(scored, mean, std, weights)
        return val, test, [name for name, w in zip(val.terms, weights, strict=True) if w]


def epoch_record(
    epoch: int,
    lr: float,
    losses: dict[str, float],
    val: ScoredSet,
    test: ScoredSet,
    selection: tuple[str, float],
    seconds: float,
    paper: dict[str, Any] | None = None,
    score_terms: list[str] | None = None,
) -> dict[str, Any]:
    """One epoch's entry of the run's history (``metrics.json`` and the checkpoints keep it)."""
    normal = val.labels == 0
    record = {
        "epoch": epoch,
        "lr": lr,
        "losses": losses,
        "val": {
            "auroc": auroc(val.labels, val.score),
            "mean_normal_score": float(np.mean(val.score[normal])) if normal.any() else math.nan,
        },
        "test": {"auroc": auroc(test.labels, test.score)},
        "selection": {"metric": selection[0], "value": selection[1]},
        "seconds": seconds,
    }
    if paper is not None:
        record["paper"] = paper
    if score_terms is not None:
        record["score_terms"] = score_terms
    return record


def epoch_line(record: dict[str, Any], epochs: int, best: bool) -> str:
    """The line an epoch prints: its losses, the validation figure the epoch is chosen on, test
    AUROC, the paper protocol's AUROC and the score's terms when scored, seconds, and whether it
    is the best epoch so far."""
    losses = record["losses"]
    # The generator's terms are model-specific (g_con, g_lat, g_enc, ...): show those present.
    terms = " ".join(f"{k[2:]} {v:.4f}" for k, v in losses.items() if k.startswith("g_"))
    # The metric the epoch is chosen on; normal-only has no validation AUROC (no anomalies).
    selection_name, value = record["selection"]["metric"], record["selection"]["value"]
    val_text = selection_text(selection_name, value)
    if selection_name != "val.auroc" and not math.isnan(record["val"]["auroc"]):
        val_text += f"  val AUROC {record['val']['auroc']:.4f}"
    return (
        f"epoch {record['epoch']:>3}/{epochs}  g {losses['g']:.4f} ({terms})  d {losses['d']:.4f}  "
        f"{val_text}  test AUROC {record['test']['auroc']:.4f}"
        + (f"  paper-protocol AUROC {record['paper']['auroc']:.4f}" if "paper" in record else "")
        + (f"  score {'+'.join(record['score_terms'])}" if "score_terms" in record else "")
        + f"  {record['seconds']:.1f}s"
        + ("  *best*" if best else "")
    )

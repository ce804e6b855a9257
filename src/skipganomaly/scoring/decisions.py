"""Decisions made from scores: the deployment normalisation and threshold, the epoch selection,
and a split's metrics at the stored threshold. Numbers in, numbers out; the scores come from
:mod:`skipganomaly.scoring.engine`.
"""

from __future__ import annotations

import numpy as np

from ..specs.config import EvalConfig
from .engine import ScoredSet
from .metrics import auroc, best_f1_threshold, detection_summary
from .normalization import ScoreNormalization

# Heatmaps are drawn on a fixed scale: this quantile of the per-pixel errors of normal validation
# images is the middle of the colour scale; twice it saturates.
MAP_QUANTILE = 0.99


def fit_normalization(val: ScoredSet, cfg: EvalConfig) -> ScoreNormalization:
    """Fix the deployment scaling and threshold on validation scores (never on test).

    Scaling: min and max raw score of the normal validation images. Threshold: the F1-best cut on
    validation when it holds labelled anomalies and ``eval.threshold`` is ``f1``; otherwise the
    ``eval.threshold_quantile`` quantile of the normal validation images' scaled scores.
    """
    normal = val.score[val.labels == 0]
    if len(normal) == 0:
        normal = val.score
    low, high = float(np.min(normal)), float(np.max(normal))
    normalization = ScoreNormalization(low=low, high=high, threshold=1.0)
    if val.pixel_errors is not None and len(val.pixel_errors):
        normalization.map_high = float(np.quantile(val.pixel_errors, MAP_QUANTILE))
    scaled = normalization(val.score)
    has_anomalies = bool((val.labels == 1).any() and (val.labels == 0).any())
    if cfg.threshold == "f1" and has_anomalies:
        _, threshold = best_f1_threshold(val.labels, scaled)
        normalization.threshold = float(threshold)
        normalization.method = "validation normal min-max; threshold = best F1 on validation"
    else:
        normalization.threshold = float(np.quantile(normalization(normal), cfg.threshold_quantile))
        normalization.method = f"validation normal min-max; threshold = {cfg.threshold_quantile:g} quantile of normal validation scores"
    return normalization


def fit_term_statistics(val: ScoredSet) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each score term over the normal validation images (all
    validation images when none is labelled normal): the standardisation of the improved score."""
    normal = val.labels == 0
    if not normal.any():
        normal = np.ones(len(val.labels), dtype=bool)
    values = np.stack([val.terms[name][normal] for name in val.terms])
    return values.mean(1), values.std(1)


def standardize_terms(
    scored: ScoredSet, mean: np.ndarray, std: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """The improved score of every image from its stored terms (what the model computes with the
    same statistics and weights; :func:`skipganomaly.models.score_terms.standardized_score`)."""
    std = np.maximum(std, 1e-8)
    weights = np.ones(len(mean)) if weights is None else weights
    return sum(weights[i] * (scored.terms[name] - mean[i]) / std[i] for i, name in enumerate(scored.terms))


def choose_terms(val: ScoredSet, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Which of the score terms to sum (weights of 1 or 0): the non-empty subset whose
    standardised sum has the highest validation AUROC, larger subsets first on ties. A term
    whose direction is wrong for this data (a reconstruction error that is lower for the
    anomalies, as for simple anomalous images) is left out rather than averaged in. Needs
    labelled anomalies in validation; without them every term counts."""
    n = len(mean)
    if not ((val.labels == 1).any() and (val.labels == 0).any()):
        return np.ones(n)
    labelled = val.labels >= 0
    best, best_auroc = np.ones(n), -1.0
    subsets = [np.array([(mask >> i) & 1 for i in range(n)], dtype=float) for mask in range(1, 2**n)]
    for weights in sorted(subsets, key=lambda w: -w.sum()):
        value = auroc(val.labels[labelled], standardize_terms(val, mean, std, weights)[labelled])
        if value > best_auroc + 1e-12:
            best, best_auroc = weights, value
    return best


def selection_value(val: ScoredSet, metric: str, epoch: int = 0) -> tuple[str, float]:
    """(metric used, value) for model selection; higher is better for all three.

    ``auto``: validation AUROC where validation holds labelled anomalies; else the mean score of
    the held-out normal images (lower is better), except for a standardised score (the improved
    recipe's ``model.score_terms``), whose normal validation images average 0 by construction:
    then the latest epoch (``last``), which the averaged weights make a steady choice."""
    has_anomalies = bool((val.labels == 1).any() and (val.labels == 0).any())
    if metric == "auto":
        metric = "auroc" if has_anomalies else ("last" if val.terms is not None else "loss")
    if metric == "last":
        return "epoch", float(epoch)
    if metric == "auroc":
        return "val.auroc", detection_summary(val.labels, val.score)["auroc"]
    normal = val.score[val.labels <= 0]
    return "val.mean_normal_score", -float(np.mean(normal))


SELECTION_TITLES = {
    "epoch": "latest epoch",
    "val.auroc": "validation AUROC",
    "val.mean_normal_score": "mean anomaly score of the held-out normal images",
}


def selection_report(metric: str, value: float) -> dict:
    """A selection metric as a person reads it: its name, the value on its own scale and which way
    is better (:func:`selection_value` negates the mean normal score so that higher wins)."""
    if metric == "val.mean_normal_score":
        return {"metric": metric, "title": SELECTION_TITLES[metric], "value": -value, "better": "lower"}
    return {
        "metric": metric,
        "title": SELECTION_TITLES.get(metric, metric),
        "value": value,
        "better": "higher",
    }


def selection_text(metric: str, value: float) -> str:
    """The per-epoch log line's validation part: ``val AUROC 0.8123``, or under normal-only
    ``val normal score 0.1234 (selects; lower is better)``."""
    report = selection_report(metric, value)
    if metric == "val.auroc":
        return f"val AUROC {report['value']:.4f}"
    if metric == "epoch":
        return "val: the latest epoch is kept (standardised score, no labelled anomalies)"
    return f"val normal score {report['value']:.4f} (selects; {report['better']} is better)"


def split_metrics(scored: ScoredSet, normalization: ScoreNormalization) -> dict:
    """Metrics of one split on the deployment-scaled scores, at the stored threshold."""
    summary = detection_summary(scored.labels, normalization(scored.score), normalization.threshold)
    summary["mean_normal_raw_score"] = (
        float(np.mean(scored.score[scored.labels == 0])) if (scored.labels == 0).any() else float("nan")
    )
    return summary

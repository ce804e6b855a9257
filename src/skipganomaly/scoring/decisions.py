"""Decisions made from scores: the deployment normalisation and threshold, the epoch selection,
and a split's metrics at the stored threshold. Numbers in, numbers out; the scores come from
:mod:`skipganomaly.scoring.engine`.
"""

from __future__ import annotations

import dataclasses
import math

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
    if cfg.threshold == "fpr":
        # Prevalence-free: the share of normal images flagged is what a deployment sets; how
        # many anomalies validation happens to hold does not move it.
        normalization.threshold = float(np.quantile(normalization(normal), 1.0 - cfg.target_fpr))
        normalization.method = (
            f"validation normal min-max; threshold = {1 - cfg.target_fpr:g} quantile of normal "
            f"validation scores (target false-positive rate {cfg.target_fpr:g})"
        )
    elif cfg.threshold == "f1" and has_anomalies:
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
    labelled anomalies in validation; without them every term counts. Where the anomalies come in
    groups (the synthetic validation's families), the subset with the best worst-group AUROC."""
    n = len(mean)
    if not ((val.labels == 1).any() and (val.labels == 0).any()):
        return np.ones(n)
    labelled = val.labels >= 0
    groups = None if val.groups is None else val.groups[labelled]
    best, best_auroc = np.ones(n), -1.0
    subsets = [np.array([(mask >> i) & 1 for i in range(n)], dtype=float) for mask in range(1, 2**n)]
    for weights in sorted(subsets, key=lambda w: -w.sum()):
        scores = standardize_terms(val, mean, std, weights)[labelled]
        value = worst_group_auroc(val.labels[labelled], scores, groups)
        if value > best_auroc + 1e-12:
            best, best_auroc = weights, value
    return best


def uses_synthetic_validation(cfg: EvalConfig, val_labels: np.ndarray | None, model) -> bool:
    """Whether a run scores the synthetic validation set (:mod:`skipganomaly.data.synthetic`):
    asked for (``eval.selection_metric=synthetic``), or ``auto`` for a model with a standardised
    score (``model.score_terms``) when validation holds no labelled anomaly (``normal-only``).
    The faithful score keeps its old rule there (the mean normal score), so faithful runs are
    unchanged."""
    if cfg.selection_metric == "synthetic":
        return True
    has_anomalies = val_labels is not None and bool((np.asarray(val_labels) == 1).any())
    return cfg.selection_metric == "auto" and not has_anomalies and bool(getattr(model, "score_terms", ()))


def synthetic_scored_set(
    val: ScoredSet, anomalies: ScoredSet, families: np.ndarray | None = None
) -> ScoredSet:
    """The synthetic validation's scores: the normal validation images (label 0) and the
    synthetic anomalies (label 1), term by term; ``families`` names each anomaly's family."""
    normal = val.labels == 0
    if not normal.any():
        normal = np.ones(len(val.labels), dtype=bool)

    def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a[normal], b])

    terms = None
    if val.terms is not None and anomalies.terms is not None:
        terms = {name: both(val.terms[name], anomalies.terms[name]) for name in val.terms}
    pooled = None
    if val.pooled_reconstruction is not None and anomalies.pooled_reconstruction is not None:
        pooled = both(val.pooled_reconstruction, anomalies.pooled_reconstruction)
    return ScoredSet(
        score=both(val.score, anomalies.score),
        reconstruction=both(val.reconstruction, anomalies.reconstruction),
        latent=both(val.latent, anomalies.latent),
        labels=np.concatenate(
            [np.zeros(int(normal.sum()), np.int64), np.ones(len(anomalies.score), np.int64)]
        ),
        indices=np.concatenate([val.indices[normal], anomalies.indices]),
        terms=terms,
        groups=None if families is None else np.concatenate([np.full(int(normal.sum()), ""), families]),
        pooled_reconstruction=pooled,
    )


def with_pooling(scored: ScoredSet, index: int) -> ScoredSet:
    """``scored`` with R (the ``reconstruction`` term) at the ``index``-th of the model's
    ``map_pooling`` candidates; the score is left for the caller to recompute."""
    value = scored.pooled_reconstruction[:, index]
    return dataclasses.replace(scored, reconstruction=value, terms={**scored.terms, "reconstruction": value})


def choose_pooling(judge: ScoredSet, val: ScoredSet, choose_subset: bool) -> tuple[int, list[float]]:
    """Which of the ``map_pooling`` candidates R uses: the index whose improved score has the
    highest figure on ``judge`` (labelled validation, or the synthetic validation: its worst
    family's AUROC, the figure epochs are chosen on), and every candidate's figure. Each candidate
    is standardised on ``val``'s normal images, and its terms are chosen (``choose_subset``) as
    the run would; ties and undefined figures keep the first candidate (the order given)."""
    figures = []
    for index in range(val.pooled_reconstruction.shape[1]):
        candidate_val, candidate = with_pooling(val, index), with_pooling(judge, index)
        mean, std = fit_term_statistics(candidate_val)
        weights = choose_terms(candidate, mean, std) if choose_subset else None
        labelled = candidate.labels >= 0
        score = standardize_terms(candidate, mean, std, weights)[labelled]
        groups = None if candidate.groups is None else candidate.groups[labelled]
        figures.append(worst_group_auroc(candidate.labels[labelled], score, groups))
    best = 0
    for index, figure in enumerate(figures):
        if not math.isnan(figure) and (math.isnan(figures[best]) or figure > figures[best]):
            best = index
    return best, figures


def group_aurocs(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """The AUROC of the normal images (label 0) against each group of anomalies alone (the
    synthetic validation's families), by group name."""
    normal = labels == 0
    kinds = sorted(set(groups[labels == 1].tolist()))
    return {
        kind: auroc(labels[normal | (groups == kind)], scores[normal | (groups == kind)]) for kind in kinds
    }


def worst_group_auroc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None) -> float:
    """The lowest of :func:`group_aurocs`; the plain AUROC without groups. A detector chosen on it
    must find every kind of synthetic anomaly, not the easiest kind very well."""
    if groups is None:
        return auroc(labels, scores)
    return min(group_aurocs(labels, scores, groups).values())


# The anomaly maps validation chooses among: the first two are what a model with a segmentation
# head mixes, in its ``map_weights`` order; the patch map replaces them (``patch_map_on``).
MAP_SOURCES = ("reconstruction", "segmentation", "patch")


def choose_map(pixel_aurocs: dict) -> tuple[str, float, str]:
    """The map with the highest pixel AUROC on validation masks: ``(source, smoothing,
    baseline)``. Keys are a source of :data:`MAP_SOURCES`, or
    ``(source, smoothing)`` pairs, or ``(source, smoothing, baseline)`` triples where the model has
    several smoothings or baselines (``model.map_baseline``) to choose among. Ties go to the
    reconstruction error (the paper's map), then to the first candidate given."""

    def key(item):
        name, value = item
        source = name if isinstance(name, str) else name[0]
        return (value, source == "reconstruction")

    best = None
    for item in pixel_aurocs.items():  # strictly better only: the first of equals stays
        if best is None or key(item) > key(best):
            best = item
    name = (best[0],) if isinstance(best[0], str) else best[0]
    source = name[0]
    smoothing = name[1] if len(name) > 1 else 0.0
    baseline = name[2] if len(name) > 2 else "none"
    return source, float(smoothing), baseline


def map_key_text(key) -> str:
    """A candidate map of :func:`choose_map` as the history writes it: ``reconstruction``,
    ``reconstruction@0.02``, ``reconstruction@0.02-mean`` (less the normal mean map)."""
    name = (key,) if isinstance(key, str) else key
    text = name[0] + (f"@{name[1]:g}" if len(name) > 1 and name[1] else "")
    return text + ("-mean" if len(name) > 2 and name[2] == "mean" else "")


def selection_value(
    val: ScoredSet, metric: str, epoch: int = 0, synthetic: ScoredSet | None = None
) -> tuple[str, float]:
    """(metric used, value) for model selection; higher is better for all of them.

    ``auto``: validation AUROC where validation holds labelled anomalies; else the AUROC of the
    synthetic validation (normal validation images against synthetic anomalies of a family
    training never sees) when the run scores one (``synthetic``); else the mean score of the
    held-out normal images (lower is better; the faithful score under normal-only)."""
    has_anomalies = bool((val.labels == 1).any() and (val.labels == 0).any())
    if metric == "auto":
        metric = "auroc" if has_anomalies else ("synthetic" if synthetic is not None else "loss")
    if metric == "synthetic":
        if synthetic is None:
            raise ValueError("selection on the synthetic validation needs its scores")
        return "synthetic_val.auroc", worst_group_auroc(synthetic.labels, synthetic.score, synthetic.groups)
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
    "synthetic_val.auroc": "synthetic validation AUROC (normal validation images against each family of "
    "synthetic anomalies, the worst family)",
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
    if metric == "synthetic_val.auroc":
        return f"synthetic val AUROC {report['value']:.4f} (worst family; selects)"
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

"""Detection metrics: numpy arrays in, plain floats out. Label 1 = abnormal, higher score = more
abnormal. A metric that is undefined for the given labels (one class only) is ``nan``."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} scores")
    return labels, scores


def _both_classes(labels: np.ndarray) -> bool:
    return bool((labels == 0).any() and (labels == 1).any())


def auroc(labels, scores) -> float:
    """Area under the ROC curve (scikit-learn)."""
    labels, scores = _as_arrays(labels, scores)
    return float(roc_auc_score(labels, scores)) if _both_classes(labels) else math.nan


def auprc(labels, scores) -> float:
    """Area under the precision-recall curve, as average precision (abnormal = positive)."""
    labels, scores = _as_arrays(labels, scores)
    return float(average_precision_score(labels, scores)) if _both_classes(labels) else math.nan


def precision_recall_f1(labels, scores, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of the rule ``score >= threshold`` -> abnormal."""
    labels, scores = _as_arrays(labels, scores)
    predicted = scores >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "threshold": float(threshold)}


def best_f1_threshold(labels, scores) -> tuple[float, float]:
    """(best F1, the threshold reaching it) over every cut between distinct scores.

    The threshold is the midpoint between the last score flagged and the next lower one, so
    it generalises a little better than the bare score value.
    """
    labels, scores = _as_arrays(labels, scores)
    if not (labels == 1).any():
        return math.nan, math.nan
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels == 1)
    fp = np.cumsum(sorted_labels == 0)
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]  # end of each tie group
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    cut = last[best]
    below = sorted_scores[cut + 1] if cut + 1 < len(scores) else sorted_scores[cut] - 1.0
    threshold = 0.5 * (sorted_scores[cut] + below)
    return float(f1[best]), float(threshold)


def equal_error_rate(labels, scores) -> float:
    """The error rate where the false positive rate equals the false negative rate (interpolated
    on the ROC curve)."""
    labels, scores = _as_arrays(labels, scores)
    if not _both_classes(labels):
        return math.nan
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increasing from <= 0 to >= 0 along the curve
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float(fpr[0])
    x0, x1 = diff[i - 1], diff[i]
    t = 0.0 if x1 == x0 else -x0 / (x1 - x0)
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over all pixels: mask > 0 marks an anomalous pixel, the map is its score."""
    return auroc((np.asarray(masks) > 0).astype(np.int64).ravel(), np.asarray(maps).ravel())


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, steps: int = 200) -> float:
    """Area under the per-region overlap curve up to ``max_fpr`` (MVTec AD's AUPRO; Bergmann et
    al., IJCV 2021), divided by ``max_fpr`` so that 1 is perfect.

    Each connected region of a mask counts once whatever its size: at a threshold, its overlap is
    the share of its pixels at or above it, and PRO is the mean overlap over regions. The
    false-positive rate is the share of normal pixels (every image's) at or above it. The curve
    is sampled at ``steps`` thresholds that spread the false-positive rate evenly over
    [0, 1]. NaN without an anomalous pixel."""
    from scipy import ndimage

    masks, maps = np.asarray(masks) > 0, np.asarray(maps, dtype=np.float64)
    regions: list[np.ndarray] = []
    for mask, values in zip(masks, maps, strict=True):
        labelled, count = ndimage.label(mask)
        regions += [np.sort(values[labelled == k]) for k in range(1, count + 1)]
    normal = np.sort(maps[~masks])
    if not regions or not len(normal):
        return math.nan
    fprs = np.linspace(0.0, 1.0, steps)
    # The threshold that flags a share ``fpr`` of the normal pixels (largest values first); tied
    # normal values make some shares unreachable, so the curve is interpolated between the points
    # reached, and ends at (1, 1) where everything is flagged.
    index = np.clip(np.ceil((1.0 - fprs) * len(normal)).astype(np.int64), 0, len(normal) - 1)
    thresholds = np.append(normal[index], [np.nextafter(normal[-1], np.inf), normal[0]])
    achieved = 1.0 - np.searchsorted(normal, thresholds, side="left") / len(normal)
    overlap = np.mean(
        [1.0 - np.searchsorted(values, thresholds, side="left") / len(values) for values in regions], axis=0
    )
    order = np.lexsort((overlap, achieved))
    achieved, overlap = achieved[order], overlap[order]
    at_limit = np.interp(max_fpr, achieved, overlap)
    keep = achieved < max_fpr
    x = np.append(achieved[keep], max_fpr)
    y = np.append(overlap[keep], at_limit)
    return float(np.trapezoid(y, x) / max_fpr)


def false_positive_rate(labels, scores, threshold: float) -> float:
    """The share of normal images (label 0) that the rule ``score >= threshold`` flags."""
    labels, scores = _as_arrays(labels, scores)
    normal = labels == 0
    return float(np.mean(scores[normal] >= threshold)) if normal.any() else math.nan


def auroc_by_type(labels, scores, types, threshold: float | None = None) -> dict[str, dict[str, float]]:
    """Table II's layout: per anomaly type, the AUROC of every normal image (label 0) against the
    abnormal images of that type alone, their count, and with ``threshold`` the share of them
    flagged (``recall``). ``types`` names each image's type (only the abnormal images' are
    read); types are listed by name."""
    labels, scores = _as_arrays(labels, scores)
    types = np.asarray([str(t) for t in types], dtype=object)
    if types.shape != labels.shape:
        raise ValueError(f"{labels.shape[0]} labels but {types.shape[0]} types")
    normal = labels == 0
    out = {}
    for name in sorted(set(types[labels == 1].tolist())):
        mine = (labels == 1) & (types == name)
        keep = normal | mine
        entry = {"auroc": auroc(labels[keep], scores[keep]), "n_abnormal": int(mine.sum())}
        if threshold is not None:
            entry["recall"] = float(np.mean(scores[mine] >= threshold))
        out[name] = entry
    return out


def curve_spread(values, last: int = 5) -> dict[str, float] | None:
    """The spread of a per-epoch curve over its last ``last`` finite values: population standard
    deviation (ddof = 0, the spread of those values themselves), range (max - min), how many values
    and the values; None without a finite value."""
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    tail = finite[-last:]
    if not tail:
        return None
    return {
        "std": float(np.std(tail)),
        "range": float(max(tail) - min(tail)),
        "epochs": len(tail),
        "values": tail,
    }


def detection_summary(labels, scores, threshold: float | None = None) -> dict[str, float]:
    """AUROC, AUPRC, best F1 and equal error rate; with ``threshold``, its precision/recall/F1."""
    labels, scores = _as_arrays(labels, scores)
    best_f1, best_threshold = best_f1_threshold(labels, scores)
    summary = {
        "n": int(len(labels)),
        "n_normal": int((labels == 0).sum()),
        "n_abnormal": int((labels == 1).sum()),
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "best_f1": best_f1,
        "best_f1_threshold": best_threshold,
        "eer": equal_error_rate(labels, scores),
    }
    if threshold is not None:
        at = precision_recall_f1(labels, scores, threshold)
        summary.update(
            {
                "threshold": at["threshold"],
                "precision": at["precision"],
                "recall": at["recall"],
                "f1": at["f1"],
            }
        )
    return summary

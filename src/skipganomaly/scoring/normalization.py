"""Scaling raw scores: the deployment normalisation fixed at training time, and Eq. 6's min-max
scaling of one evaluated set (paper-style reports). Numbers in, numbers out; no PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def min_max_scale(scores: np.ndarray) -> np.ndarray:
    """Eq. 6: scale the scores of one evaluated set to [0, 1]. Depends on the whole set, so it is
    for paper-style reporting only; AUROC is unchanged by it. A constant set maps to zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    low, high = scores.min(), scores.max()
    if high <= low:
        return np.zeros_like(scores)
    return (scores - low) / (high - low)


@dataclass
class ScoreNormalization:
    """Deployment scaling fixed at training time, so one image's score never depends on others.

    ``low`` and ``high`` are the smallest and largest raw score (Eq. 5) of the normal validation
    images: a normalised score of 1 is as anomalous as the most anomalous-looking normal image seen
    in validation. ``threshold`` is on the normalised scale: scores >= threshold are anomalous.
    """

    low: float
    high: float
    threshold: float
    method: str = ""
    map_high: float = 0.5  # per-pixel error at the middle of the heatmap colour scale

    def __call__(self, raw_scores):
        span = self.high - self.low
        if span <= 0:
            span = 1.0
        return (raw_scores - self.low) / span

    def to_dict(self) -> dict:
        return {
            "low": self.low,
            "high": self.high,
            "threshold": self.threshold,
            "method": self.method,
            "map_high": self.map_high,
        }

    @classmethod
    def from_dict(cls, values: dict) -> ScoreNormalization:
        return cls(
            low=float(values["low"]),
            high=float(values["high"]),
            threshold=float(values["threshold"]),
            method=str(values.get("method", "")),
            map_high=float(values.get("map_high", 0.5)),
        )

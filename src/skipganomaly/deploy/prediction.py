"""One image's result, as ``predict``, the :class:`~skipganomaly.deploy.detector.Detector` and the
service report it. No PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Prediction:
    """One image's result. ``score`` is scaled so that normal validation images span 0 to 1;
    ``is_anomalous`` is ``score >= threshold``; ``raw_score`` is the model's score before scaling
    and ``reconstruction``, ``latent`` its parts (Eq. 5), ``parts`` every per-image term the model
    reports. With maps: ``anomaly_map`` (H x W float32, |x - G(x)| at the model's resolution) and
    ``reconstructed`` (H x W x C uint8, G(x))."""

    path: str
    score: float
    is_anomalous: bool
    raw_score: float
    reconstruction: float
    latent: float
    anomaly_map: np.ndarray | None = None
    heatmap: str = ""
    size: tuple[int, int] | None = None  # the file's own (width, height), when scored from a file
    reconstructed: np.ndarray | None = None
    parts: dict[str, float] = field(default_factory=dict)

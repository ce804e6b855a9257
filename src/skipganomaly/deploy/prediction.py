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
    reports, by their documented names (:mod:`~skipganomaly.deploy.contract`), and ``shares`` each
    term's share of the score. With maps: ``anomaly_map`` (H x W float32, |x - G(x)| at the model's
    resolution), ``reconstructed`` (H x W x C uint8, G(x)) and ``term_maps`` (other terms' maps).

    ``error``: why this image could not be scored (then the numbers are NaN and the verdict False);
    empty for a scored image. ``out_of_domain`` with ``domain_reason``: the image is unlike anything
    the model saw in training (:mod:`~skipganomaly.scoring.domain`), a warning beside the verdict
    that changes neither the score nor the verdict."""

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
    shares: dict[str, float] = field(default_factory=dict)
    term_maps: dict[str, np.ndarray] = field(default_factory=dict)
    error: str = ""
    out_of_domain: bool = False
    domain_reason: str = ""

    @classmethod
    def failed(cls, path: str, error: str) -> Prediction:
        """The result of an image that could not be scored."""
        nan = float("nan")
        return cls(
            path=path,
            score=nan,
            is_anomalous=False,
            raw_score=nan,
            reconstruction=nan,
            latent=nan,
            error=error,
        )

"""What an exported model's outputs are called and mean, and how its score is made of its terms:
the one statement of the export's contract, read by the export (to name and describe the graph's
outputs), by the :class:`~skipganomaly.deploy.detector.Detector` (to take only documented outputs
into :class:`~skipganomaly.deploy.prediction.Prediction`) and by the page (through the JSON).
No PyTorch.

The outputs, per image, in this order:

* ``score``, ``is_anomalous``, ``raw_score``: the scaled score, its verdict, A before scaling;
* ``reconstruction`` (R) and ``latent`` (L), always, then each other term of the model's score
  (``model.score_terms``: ``knn``, ``rotation``, ...) under the term's own name;
* ``anomaly_map`` (R's map, |x - G(x)|) and ``reconstructed`` (G(x));
* ``<term>_map`` for each other term with a per-pixel map of its own (as the model reports it).

The score's composition (``score_terms`` in the metadata) lists each term with its weight, mean
and standard deviation: ``raw_score = sum(weight * (term - mean) / std)``. Eq. 5 is the case
``reconstruction`` (weight lambda) and ``latent`` (weight 1 - lambda), mean 0, std 1. A term's
*contribution* to one image's score is its summand; its *share* is the contribution's magnitude
over the sum of all magnitudes (so shares add to 1).
"""

from __future__ import annotations

import math
from typing import Any

from ..specs.score_terms import SCORE_TERM_SPECS

HEAD_OUTPUTS = ("score", "is_anomalous", "raw_score")
ALWAYS_TERMS = ("reconstruction", "latent")
IMAGE_OUTPUTS = ("anomaly_map", "reconstructed")
MAP_SUFFIX = "_map"
# The map of R is the anomaly map every model has had since the first export.
TERM_MAP_OUTPUT = {"reconstruction": "anomaly_map"}

_FIXED_DESCRIPTIONS = {
    "score": "per image: the anomaly score scaled by the run's deployment normalisation "
    "(normal validation images span 0 to 1)",
    "is_anomalous": "per image: score >= threshold",
    "raw_score": "per image: the model's anomaly score A before scaling (Eq. 5, or the sum of the "
    "standardised terms listed under score_terms)",
    "anomaly_map": "(N, H, W): the run's anomaly map: per-pixel |x - G(x)| averaged over channels "
    "(the map of R), or, for a model with a segmentation head or the patch term, the map its "
    "validation chose (metadata map_source), smoothed as validation chose (metadata map_smoothing), less the normal "
    "validation images' mean map where validation chose that (metadata map_baseline)",
    "reconstructed": "(N, C, H, W): the reconstruction G(x) in [-1, 1]",
}


def term_map_output(term: str) -> str:
    """The output that holds a term's per-pixel map (when the model makes one)."""
    return TERM_MAP_OUTPUT.get(term, f"{term}{MAP_SUFFIX}")


def output_names(score_terms: tuple[str, ...], mapped_terms: tuple[str, ...] = ()) -> list[str]:
    """The exported outputs, in order, of a model whose score sums ``score_terms`` (empty: Eq. 5)
    and which makes maps for ``mapped_terms`` besides R's."""
    terms = [*ALWAYS_TERMS, *(t for t in score_terms if t not in ALWAYS_TERMS)]
    maps = [term_map_output(t) for t in mapped_terms if term_map_output(t) not in IMAGE_OUTPUTS]
    return [*HEAD_OUTPUTS, *terms, *IMAGE_OUTPUTS, *maps]


def describe_output(name: str) -> str | None:
    """An output's documented meaning, or None for a name outside the contract."""
    if name in _FIXED_DESCRIPTIONS:
        return _FIXED_DESCRIPTIONS[name]
    if name in SCORE_TERM_SPECS:
        return f"per image: {SCORE_TERM_SPECS[name].title}"
    if name.endswith(MAP_SUFFIX) and name[: -len(MAP_SUFFIX)] in SCORE_TERM_SPECS:
        return f"(N, H, W): the per-pixel map of the {name[: -len(MAP_SUFFIX)]} term"
    return None


def is_term_output(name: str) -> bool:
    return name in SCORE_TERM_SPECS


def composition(
    names: tuple[str, ...], weights: list[float], means: list[float], stds: list[float], maps: set[str]
) -> list[dict[str, Any]]:
    """The metadata's ``score_terms``: each term of the score with its weight, mean, std and the
    output holding its map (None when it has none)."""
    return [
        {
            "name": name,
            "title": SCORE_TERM_SPECS[name].title,
            "weight": float(w),
            "mean": float(m),
            "std": float(s),
            "map": term_map_output(name) if term_map_output(name) in maps else None,
        }
        for name, w, m, s in zip(names, weights, means, stds, strict=True)
    ]


def paper_composition(score_lambda: float) -> list[dict[str, Any]]:
    """Eq. 5 as a composition (also what an export written before ``score_terms`` was declared
    scored with)."""
    return composition(
        ALWAYS_TERMS, [score_lambda, 1.0 - score_lambda], [0.0, 0.0], [1.0, 1.0], {"anomaly_map"}
    )


def term_shares(parts: dict[str, float], terms: list[dict[str, Any]]) -> dict[str, float]:
    """Each term's share of one image's score (see the module docstring); terms with weight 0 (left
    out by validation) get share 0. Empty when a term's value is missing or not finite."""
    contributions = {}
    for term in terms:
        value = parts.get(term["name"])
        if value is None or not math.isfinite(value):
            return {}
        contributions[term["name"]] = abs(term["weight"] * (value - term["mean"]) / term["std"])
    total = sum(contributions.values())
    if total <= 0:
        return {name: 0.0 for name in contributions}
    return {name: c / total for name, c in contributions.items()}


def leading_term(shares: dict[str, float], terms: list[dict[str, Any]]) -> str | None:
    """The term with the largest share (the one that scores), or None without shares."""
    if not shares:
        return None
    return max(terms, key=lambda t: shares.get(t["name"], 0.0))["name"]

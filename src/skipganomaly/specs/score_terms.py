"""The terms an improved score can sum (``model.score_terms``): one :class:`ScoreTermSpec` each.

A spec says what the rest of the package needs to know about a term without computing it:

* ``title``: what it measures, in one line (the export's description of an output of that name);
* ``requires``: the ``model.*`` switches it needs on (the rotation term needs D's rotation head),
  checked with the configuration and when the model is built;
* ``feature_bank``: the ``model.*`` key that sizes a bank of normal training images' features the
  term compares with (the knn term's ``model.knn_bank``). The model keeps the bank as a buffer
  and the trainer fills it from the training images before each validation.

The computations are :mod:`skipganomaly.models.score_terms` (PyTorch), one function per spec. The
trainer, the scoring engine and the export iterate over these specs and name no term. Adding a
term is its spec here and its function there (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class ScoreTermSpec:
    """One term of the improved score: its name, what it measures, and what it needs."""

    name: str
    title: str
    requires: tuple[str, ...] = ()
    feature_bank: str | None = None


# Each term is larger for more anomalous images; the score standardises each on normal validation
# images and sums those validation chooses (skipganomaly.scoring.decisions.choose_terms).
SCORE_TERM_SPECS: dict[str, ScoreTermSpec] = {
    spec.name: spec
    for spec in (
        # R (Eq. 2), pooled over the anomaly map by model.map_pooling.
        ScoreTermSpec("reconstruction", "R of Eq. 5, mean |x - G(x)|"),
        # L (Eq. 3).
        ScoreTermSpec("latent", "L of Eq. 5, mean (f(x) - f(G(x)))^2"),
        ScoreTermSpec(
            "knn",
            "mean distance from f(x) to its model.knn_k nearest features of normal training images",
            feature_bank="knn_bank",
        ),
        ScoreTermSpec(
            "rotation",
            "cross-entropy of D's rotation head over the four quarter turns of the image",
            requires=("rotation_head",),
        ),
        ScoreTermSpec(
            "segmentation",
            "peak of the segmentation head's anomaly probability map on (x, G(x)), smoothed 3x3",
            requires=("segmentation_head",),
        ),
        ScoreTermSpec(
            "patch",
            "highest distance from a region's discriminator features to the nearest region of "
            "normal training images (model.patch_bank of them)",
        ),
    )
}
SCORE_TERMS = tuple(SCORE_TERM_SPECS)


def parse_score_terms(text: str) -> tuple[str, ...]:
    """``"reconstruction,knn"`` -> ("reconstruction", "knn"); "" -> () (the paper's score, Eq. 5)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SCORE_TERMS]
    if unknown:
        raise UserError(f"model.score_terms: {unknown[0]!r} is unknown; choose from {', '.join(SCORE_TERMS)}")
    if len(set(names)) != len(names):
        raise UserError(f"model.score_terms={text!r} names a term twice")
    return names


def missing_switches(names: tuple[str, ...], settings: Any) -> list[tuple[str, str]]:
    """(term, switch) for each ``model.*`` switch a term of ``names`` needs that ``settings`` (the
    model section of a configuration, or the model's own arguments as a namespace) leaves off."""
    return [
        (name, switch)
        for name in names
        for switch in SCORE_TERM_SPECS[name].requires
        if not getattr(settings, switch)
    ]


def feature_bank_key(names: tuple[str, ...]) -> str | None:
    """The ``model.*`` key sizing the bank of normal features the terms ``names`` compare with, or
    None when none of them uses one (the terms that use a bank share the model's one bank)."""
    keys = {SCORE_TERM_SPECS[name].feature_bank for name in names} - {None}
    if len(keys) > 1:
        raise ValueError(f"score terms {names} ask for banks of different sizes: {sorted(keys)}")
    return keys.pop() if keys else None


def bank_within(args: dict[str, Any], available: int) -> dict[str, Any]:
    """A model's constructor arguments with its feature bank no larger than the ``available``
    normal training images (each image is in the bank at most once)."""
    key = feature_bank_key(parse_score_terms(str(args.get("score_terms", ""))))
    if key is None:
        return args
    return {**args, key: min(args[key], available)}

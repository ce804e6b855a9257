"""The terms an improved score can combine (``model.score_terms``): their names and the rule that
reads them. No PyTorch; the computations are :mod:`skipganomaly.models.score_terms`."""

from __future__ import annotations

from .errors import UserError

# The terms the improved Skip-GANomaly score can combine (``model.score_terms``), each larger for
# more anomalous images: R (Eq. 2, pooled by ``model.map_pooling``), L (Eq. 3), the distance of f(x)
# to the nearest features of normal training images, and the loss of D's rotation task.
SCORE_TERMS = ("reconstruction", "latent", "knn", "rotation")


def parse_score_terms(text: str) -> tuple[str, ...]:
    """``"reconstruction,knn"`` -> ("reconstruction", "knn"); "" -> () (the paper's score, Eq. 5)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SCORE_TERMS]
    if unknown:
        raise UserError(f"model.score_terms: {unknown[0]!r} is unknown; choose from {', '.join(SCORE_TERMS)}")
    if len(set(names)) != len(names):
        raise UserError(f"model.score_terms={text!r} names a term twice")
    return names

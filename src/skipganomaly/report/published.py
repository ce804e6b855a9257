"""Published reference results: Table I of the Skip-GANomaly paper (AUROC on CIFAR-10).

Source: S. Akcay, A. Atapour-Abarghouei, T. P. Breckon, "Skip-GANomaly: Skip Connected and
Adversarially Trained Encoder-Decoder Anomaly Detection", International Joint Conference on
Neural Networks (IJCNN), 2019, Table I ("AUC results for CIFAR-10 dataset"). Leave one class
out: each column names the abnormal class, the other nine are normal. The rows AnoGAN [9],
EGBAD [12] and GANomaly [13] are the baselines as the paper reports them; "Proposed" is
Skip-GANomaly.

These numbers come from the authors' procedure (the official code's): the best epoch chosen on the
test set and scoring with BatchNorm in training mode over the label-ordered test set (normal images first, then the abnormal ones), so they are
optimistic in the sense of this package's ``paper`` protocol. They were measured on the original
CIFAR-10 files.
"""

from __future__ import annotations

from ..specs.models import MODEL_SPECS, TABLE_I_CLASSES

CITATION = (
    "S. Akcay, A. Atapour-Abarghouei, T. P. Breckon. Skip-GANomaly: Skip Connected and Adversarially "
    "Trained Encoder-Decoder Anomaly Detection. International Joint Conference on Neural Networks "
    "(IJCNN), 2019. Table I: AUC results for CIFAR-10 dataset."
)
PROTOCOL_NOTE = (
    "published by the authors; their procedure picks the epoch on the test set and scores with "
    "train-mode BatchNorm (the paper protocol): OPTIMISTIC"
)

# The paper's column order and names (CIFAR-10's airplane and automobile are "plane" and "car").
CIFAR10_TO_PAPER: dict[str, str] = {"airplane": "plane", "automobile": "car"}

# The rows of Table I, keyed by this package's model names, in the paper's row order; the values
# and labels are each model's ``table_i`` (specs/models.py).
_ROWS = sorted(
    (spec for spec in MODEL_SPECS.values() if spec.table_i), key=lambda spec: spec.table_i.position
)
TABLE_I: dict[str, dict[str, float]] = {
    spec.name: dict(zip(TABLE_I_CLASSES, spec.table_i.auroc, strict=True)) for spec in _ROWS
}
ROW_LABELS: dict[str, str] = {spec.name: spec.table_i.label for spec in _ROWS}


def paper_class_name(name: str) -> str:
    """A CIFAR-10 class name as Table I spells it (others unchanged)."""
    return CIFAR10_TO_PAPER.get(name, name)


def is_table_i_classes(class_names: list[str]) -> bool:
    """Whether these are CIFAR-10's classes, so Table I's columns apply."""
    return {paper_class_name(n) for n in class_names} == set(TABLE_I_CLASSES)


def table_i_order(class_names: list[str]) -> list[str]:
    """Class names sorted in Table I's column order (only meaningful for CIFAR-10's classes)."""
    return sorted(class_names, key=lambda n: TABLE_I_CLASSES.index(paper_class_name(n)))

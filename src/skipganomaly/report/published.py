"""Published reference results: Table I of the Skip-GANomaly paper (AUROC on CIFAR-10).

Source: S. Akcay, A. Atapour-Abarghouei, T. P. Breckon, "Skip-GANomaly: Skip Connected and
Adversarially Trained Encoder-Decoder Anomaly Detection", International Joint Conference on
Neural Networks (IJCNN), 2019, Table I ("AUC results for CIFAR-10 dataset"). Leave one class
out: each column names the abnormal class, the other nine are normal. The rows AnoGAN [9],
EGBAD [12] and GANomaly [13] are the baselines as the paper reports them; "Proposed" is
Skip-GANomaly.

These numbers come from the authors' procedure (the official code's): the best epoch chosen on the
test set and scoring with BatchNorm in training mode over the test set (normal images first), so they are
optimistic in the sense of this package's ``paper`` protocol. They were measured on the original
CIFAR-10 files.
"""

from __future__ import annotations

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
TABLE_I_CLASSES: tuple[str, ...] = (
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "plane",
    "ship",
    "truck",
)
CIFAR10_TO_PAPER: dict[str, str] = {"airplane": "plane", "automobile": "car"}

# Rows of Table I, keyed by this package's model names (``models.MODELS``), in the paper's order.
TABLE_I: dict[str, dict[str, float]] = {
    "anogan": dict(
        zip(
            TABLE_I_CLASSES,
            (0.411, 0.492, 0.399, 0.335, 0.393, 0.321, 0.399, 0.516, 0.567, 0.511),
            strict=True,
        )
    ),
    "egbad": dict(
        zip(
            TABLE_I_CLASSES,
            (0.383, 0.514, 0.448, 0.374, 0.481, 0.353, 0.526, 0.577, 0.413, 0.555),
            strict=True,
        )
    ),
    "ganomaly": dict(
        zip(
            TABLE_I_CLASSES,
            (0.510, 0.631, 0.587, 0.593, 0.628, 0.683, 0.605, 0.633, 0.616, 0.617),
            strict=True,
        )
    ),
    "skipganomaly": dict(
        zip(
            TABLE_I_CLASSES,
            (0.448, 0.953, 0.607, 0.602, 0.615, 0.931, 0.788, 0.797, 0.659, 0.907),
            strict=True,
        )
    ),
}
ROW_LABELS: dict[str, str] = {
    "anogan": "AnoGAN [9]",
    "egbad": "EGBAD [12]",
    "ganomaly": "GANomaly [13]",
    "skipganomaly": "Skip-GANomaly (Proposed)",
}


def paper_class_name(name: str) -> str:
    """A CIFAR-10 class name as Table I spells it (others unchanged)."""
    return CIFAR10_TO_PAPER.get(name, name)


def is_table_i_classes(class_names: list[str]) -> bool:
    """Whether these are CIFAR-10's classes, so Table I's columns apply."""
    return {paper_class_name(n) for n in class_names} == set(TABLE_I_CLASSES)


def table_i_order(class_names: list[str]) -> list[str]:
    """Class names sorted in Table I's column order (only meaningful for CIFAR-10's classes)."""
    return sorted(class_names, key=lambda n: TABLE_I_CLASSES.index(paper_class_name(n)))

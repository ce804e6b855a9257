"""The synthetic anomalies (``train.corruptions``, ``eval.synthetic_family``): one
:class:`CorruptionSpec` per family, and the rules that tie their settings together.

A family is a way of damaging a normal image in a region, with the region's pixel mask: what a
restoring generator learns to undo and a segmentation head learns to find (DRAEM, Zavrtanik et
al., ICCV 2021; CutPaste, Li et al., CVPR 2021), and, for a family training never sees, the
anomalies of the synthetic validation set that chooses the epoch, the score's terms and the map
under the ``normal-only`` protocol. The computations are :mod:`skipganomaly.data.corruptions`
(PyTorch), one function per spec. Adding a family is its spec here and its function there.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class CorruptionSpec:
    """One family of synthetic anomalies: its name, what it does in one line, and whether its
    region is a smooth blob, sized by ``train.blob_scale`` (the others scale with the image)."""

    name: str
    title: str
    blobs: bool = False


CORRUPTION_SPECS: dict[str, CorruptionSpec] = {
    spec.name: spec
    for spec in (
        CorruptionSpec(
            "blend",
            "a smooth random-noise (Perlin-like) blob filled with another image of the batch, "
            "blended at a random opacity (DRAEM)",
            blobs=True,
        ),
        CorruptionSpec(
            "cutpaste",
            "a rectangle or a thin scar cut from the image itself and pasted elsewhere (CutPaste)",
        ),
        CorruptionSpec(
            "intensity",
            "a smooth blob whose brightness and contrast are changed, or which is blurred",
            blobs=True,
        ),
        CorruptionSpec(
            "stain",
            "a smooth blob painted with one random colour and fine noise: a stain or a hole",
            blobs=True,
        ),
        CorruptionSpec(
            "shuffle",
            "the image's four quadrants swapped around: every local patch is normal, the whole is "
            "not (an anomaly of layout, not of texture)",
        ),
        CorruptionSpec(
            "chimera",
            "one side of a straight cut taken from another image: two normal parts that do not "
            "belong together (a semantic anomaly; measured as a held-out family in "
            "docs/normal-only.md, not a default)",
        ),
        CorruptionSpec(
            "warp",
            "a smooth blob bent by a random flow: the image's own colours and texture in a new "
            "shape (a dent, a bend); the only family that changes geometry",
            blobs=True,
        ),
    )
}
CORRUPTIONS = tuple(CORRUPTION_SPECS)
# train.blob_scale: the blobs' noise cells of fixed pixels, a fixed share of the image, or half
# the blobs each way.
BLOB_SCALES = ("pixels", "image", "both")
# eval.synthetic_map_blobs: which local synthetic anomalies choose the map: all, or only those
# whose damage is a region (a blob at image scale, or a family that scales with the image).
MAP_BLOBS = ("all", "regions")


def parse_corruptions(text: str, key: str = "train.corruptions") -> tuple[str, ...]:
    """``"blend,cutpaste"`` -> ("blend", "cutpaste"); "" -> () (no synthetic anomalies)."""
    names = tuple(name.strip() for name in str(text).split(",") if name.strip())
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown:
        raise UserError(f"{key}: {unknown[0]!r} is unknown; choose from {', '.join(CORRUPTIONS)}")
    if len(set(names)) != len(names):
        raise UserError(f"{key}={text!r} names a family twice")
    return names


def check_blob_settings(blob_scale: str, map_blobs: str) -> None:
    """``train.blob_scale`` and ``eval.synthetic_map_blobs``, alone and together (a run's
    configuration, or a read-back benchmark's overrides of it); raises a one-line UserError."""
    if blob_scale not in BLOB_SCALES:
        raise UserError(f"train.blob_scale={blob_scale!r}: choose {', '.join(BLOB_SCALES)}")
    if map_blobs not in MAP_BLOBS:
        raise UserError(f"eval.synthetic_map_blobs={map_blobs!r}: choose {', '.join(MAP_BLOBS)}")
    if map_blobs == "regions" and blob_scale == "pixels":
        raise UserError(
            "eval.synthetic_map_blobs=regions needs blobs that are regions: set train.blob_scale=both (or image)"
        )


def check_corruption_settings(config) -> None:
    """The rules between ``train.corruptions``, ``model.segmentation_head`` and the synthetic
    validation's family, on a resolved configuration; raises a one-line UserError."""
    train, model, evaluation = config.train, config.model, config.eval
    families = parse_corruptions(train.corruptions)
    held_out = parse_corruptions(evaluation.synthetic_family, "eval.synthetic_family")
    if not held_out:
        raise UserError("eval.synthetic_family is empty: name one family or more, e.g. stain,shuffle")
    for name in held_out:
        if name in families:
            raise UserError(
                f"eval.synthetic_family: {name!r} is also in train.corruptions; the synthetic "
                "validation needs families training never sees, so pick another"
            )
    check_blob_settings(train.blob_scale, evaluation.synthetic_map_blobs)
    if not 0.0 < train.corruption_fraction <= 1.0:
        raise UserError(f"train.corruption_fraction={train.corruption_fraction}: a fraction in (0, 1]")
    if evaluation.synthetic_images < 8:
        raise UserError(f"eval.synthetic_images={evaluation.synthetic_images}: use at least 8")
    if getattr(model, "segmentation_head", False) and not families:
        raise UserError(
            "model.segmentation_head=true learns from synthetic anomalies: set train.corruptions "
            f"(for example {','.join(CORRUPTIONS[:3])})"
        )
    if families and model.name != "skipganomaly":
        raise UserError(f"train.corruptions: model {model.name!r} does not train on corrupted images")

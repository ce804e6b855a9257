"""What the benchmarks that read back one finished run share (``map_smoothing.py``,
``map_choice.py``, ``score_pooling.py``, ``patch_features.py``, ``term_choice.py``): their
command line (the run folder and ``--json``; ``--family`` and ``--blob-scale`` for those that
rebuild the synthetic validation), the run's best checkpoint, config, model in eval mode and
data, or one line saying why it is skipped."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass


@dataclass
class ReadBack:
    """One finished run, read back: the command line, its best checkpoint and config, its model
    in eval mode, and its data split as training split it."""

    args: argparse.Namespace
    checkpoint: object
    config: object
    model: object
    splits: object


def read_back(doc: str, argv: list[str] | None, synthetic: bool = False, requires=None) -> ReadBack | None:
    """The run named on the command line, or None (after printing ``skipped: <why>``) when it
    cannot be read or lacks what the benchmark needs: a benchmark skips, it does not fail.

    ``synthetic``: also take ``--family``, ``--blob-scale`` and ``--map-blobs`` into the run's config,
    for a benchmark that rebuilds the synthetic validation. ``requires``: ``(test, why)``, where
    ``test(model)`` says whether the model has what the benchmark reads (checked before the data
    is loaded)."""
    from skipganomaly.data import prepare_data
    from skipganomaly.formats.checkpoint import load_run_checkpoint
    from skipganomaly.specs.errors import UserError

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder (checkpoints/best.pt, config.yaml)")
    parser.add_argument("--json", help="also write the figures to this file")
    if synthetic:
        synthetic_options(parser)
    args = parser.parse_args(argv)
    try:
        checkpoint = load_run_checkpoint(args.run)
    except UserError as exc:
        print(f"skipped: {exc}")
        return None
    model = checkpoint.build_model().eval()
    if requires is not None and not requires[0](model):
        print(f"skipped: {args.run} {requires[1]}")
        return None
    config = checkpoint.config
    if synthetic:
        apply_synthetic_options(args, config)
    return ReadBack(args, checkpoint, config, model, prepare_data(config.data))


# ``read_back``'s ``requires`` for a benchmark that reads the standardised score terms.
STANDARDISED_TERMS = (
    lambda model: bool(getattr(model, "score_terms", ())),
    "scores with Eq. 5, not with standardised terms",
)


def write_json(path: str | None, figures: dict) -> None:
    """Write ``figures`` to ``path`` (the ``--json`` option) when one was given."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)


def synthetic_options(parser) -> None:
    """``--family``, ``--blob-scale`` and ``--map-blobs``: rebuild the run's synthetic
    validation otherwise."""
    from skipganomaly.specs.corruptions import BLOB_SCALES, MAP_BLOBS

    parser.add_argument(
        "--family",
        help="damage the synthetic validation with these families instead of the run's "
        "eval.synthetic_family (to ask which family's choice of map finds real defects)",
    )
    parser.add_argument("--blob-scale", choices=BLOB_SCALES, help="instead of the run's train.blob_scale")
    parser.add_argument(
        "--map-blobs", choices=MAP_BLOBS, help="instead of the run's eval.synthetic_map_blobs"
    )


def apply_synthetic_options(args, config) -> None:
    """Put ``--family``, ``--blob-scale`` and ``--map-blobs``, where given, into the run's
    ``config``."""
    from skipganomaly.specs.corruptions import check_blob_settings, parse_corruptions

    if args.family:
        parse_corruptions(args.family, "--family")
        config.eval.synthetic_family = args.family
    config.train.blob_scale = args.blob_scale or config.train.blob_scale
    config.eval.synthetic_map_blobs = args.map_blobs or config.eval.synthetic_map_blobs
    check_blob_settings(config.train.blob_scale, config.eval.synthetic_map_blobs)

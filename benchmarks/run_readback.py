"""What the benchmarks that read back one finished run share (``map_smoothing.py``,
``score_pooling.py``, ``patch_features.py``): their command line (the run folder and ``--json``),
the run's best checkpoint and its model in eval mode, or one line saying why it is skipped."""

from __future__ import annotations

import argparse
import json


def read_back(doc: str, argv: list[str] | None):
    """``(args, checkpoint, model)`` of the run named on the command line, or None (after printing
    ``skipped: <why>``) when it cannot be read: a benchmark skips, it does not fail."""
    from skipganomaly.formats.checkpoint import load_run_checkpoint
    from skipganomaly.specs.errors import UserError

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder (checkpoints/best.pt, config.yaml)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        checkpoint = load_run_checkpoint(args.run)
    except UserError as exc:
        print(f"skipped: {exc}")
        return None
    return args, checkpoint, checkpoint.build_model().eval()


def write_json(path: str | None, figures: dict) -> None:
    """Write ``figures`` to ``path`` (the ``--json`` option) when one was given."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)

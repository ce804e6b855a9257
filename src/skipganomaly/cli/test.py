"""``skipganomaly test``: re-evaluate a trained run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..specs.errors import UserError
from .options import add_common, add_trained_run
from .summary import print_summary

NAME = "test"


def add_parser(verbs) -> None:
    test = verbs.add_parser(
        NAME,
        help="re-evaluate a trained run",
        description="Re-evaluate a run's checkpoint on its validation and test sets and write the metrics "
        "beside the run's training record (RUN_DIR/test-<checkpoint>.json; metrics.json stays as training "
        "wrote it).",
    )
    add_trained_run(test)
    test.add_argument(
        "--data-root", metavar="DIR", help="read the data from here instead of the path stored in the run"
    )
    test.add_argument(
        "--output",
        metavar="FILE.json",
        help="where to write the metrics (default RUN_DIR/test-<checkpoint>.json)",
    )
    test.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a file at --output that is not an earlier test's metrics (never the run's files)",
    )
    add_common(test)


def test_results_path(run_dir: Path, which: str) -> Path:
    """Where ``skipganomaly test`` writes by default: beside the run's training record."""
    return run_dir / f"test-{which}.json"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import prepare_data
    from ..evaluation.record import evaluate_run
    from ..formats.checkpoint import checkpoint_path, load_run_checkpoint
    from ..runtime.device import resolve_device
    from ..runtime.files import check_output_file, write_json
    from ..runtime.outputs import InputSet, check_replaceable, json_with_keys, refuse_input
    from ..runtime.precision import resolve_precision

    run_dir = Path(args.run)
    if args.output:
        output = Path(args.output)
        check_output_file(output, "--output", "metrics.json")
        if output.absolute() == (run_dir / "metrics.json").absolute() or (
            output.exists()
            and (run_dir / "metrics.json").exists()
            and output.samefile(run_dir / "metrics.json")
        ):
            raise UserError(
                f"--output {output} is the run's training record, which test never rewrites; choose another file"
            )
        # The checkpoint it reads and every file it does not own stay as they are.
        refuse_input(output, InputSet([checkpoint_path(run_dir, args.checkpoint)]), "--output")
        check_replaceable(
            output,
            "--output",
            json_with_keys("checkpoint", "content_hash"),
            "a test's metrics JSON",
            args.overwrite,
        )
    else:
        output = test_results_path(run_dir, args.checkpoint)
        if run_dir.is_dir() and not os.access(run_dir, os.W_OK | os.X_OK):
            raise UserError(
                f"--run {run_dir} is not writable, so the results cannot go beside it; pass --output FILE.json"
            )
    checkpoint = load_run_checkpoint(run_dir, args.checkpoint)
    config = checkpoint.config
    if args.data_root:
        config.data.root = args.data_root
    device = resolve_device(args.device)
    amp_dtype = resolve_precision(config.train.precision, device)
    model = checkpoint.build_model().to(device)
    if config.train.channels_last:  # as the trainer and predict score: the same kernels, the same numbers
        model = model.to(memory_format=torch.channels_last)
    splits = prepare_data(config.data)
    print(splits.describe())
    metrics = evaluate_run(checkpoint, splits, config, device, amp_dtype, model=model).metrics
    metrics["checkpoint"] = args.checkpoint
    metrics["content_hash"] = checkpoint.content_hash
    write_json(output, metrics)
    print_summary(metrics, output)
    return 0

"""``skipganomaly train``: train a model on normal images and evaluate it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..specs.config import Config, DataConfig, TrainConfig, build_config
from ..specs.errors import UserError
from .options import (
    TRAIN_FLAGS,
    TRAIN_ONLY_FLAGS,
    add_common,
    add_run_settings,
    user_settings,
    write_failure,
)
from .summary import print_summary

NAME = "train"


def add_parser(verbs) -> None:
    train = verbs.add_parser(
        NAME,
        help="train a model on normal images and evaluate it",
        description=(
            "Train on the normal images of a data set, select the epoch on validation, and write "
            "RUN_DIR/config.yaml, RUN_DIR/checkpoints/{best,last}.pt, RUN_DIR/metrics.json, "
            "RUN_DIR/scores.csv and RUN_DIR/log.jsonl. Values come from the dataclass defaults, the "
            "--preset, --config FILE.yaml or bundled NAME, --set overrides, then the flags below "
            "(later wins)."
        ),
    )
    add_run_settings(
        train,
        {
            "preset": f"default {TrainConfig.preset} for Skip-GANomaly, reference for the baselines",
            "batch_size": f"default {DataConfig.batch_size}",
            "epochs": f"default {TrainConfig.epochs}",
            "precision": f"default {TrainConfig.precision}",
        },
    )
    what = train.add_argument_group("what to train")
    for flag in TRAIN_ONLY_FLAGS:
        what.add_argument(flag.name, help=flag.help, **flag.options)
    which = what.add_mutually_exclusive_group()
    which.add_argument(
        "--abnormal-class",
        metavar="NAME",
        help="leave-one-class-out: this class is abnormal (digits default: 0)",
    )
    which.add_argument(
        "--normal-class", metavar="NAME", help="one-class: this class is normal, all others abnormal"
    )
    train.add_argument(
        "--output",
        metavar="RUN_DIR",
        help="run folder (default runs/<dataset>-<class>-seed<S>); must be new or empty (an interrupted run "
        "continues with --resume)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its newest checkpoint (RUN_DIR/checkpoints/last.pt, or best.pt "
        "when last.pt is missing), or start it again from RUN_DIR/config.yaml if it stopped in its first epoch",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    add_common(train)


def resolve_train_config(args: argparse.Namespace) -> Config:
    user = user_settings(args, TRAIN_FLAGS)
    if args.abnormal_class is not None:
        user["data.normal_class"] = None
    if args.normal_class is not None:
        user["data.abnormal_class"] = None
    return build_config(user)


def default_run_dir(config: Config) -> Path:
    d = config.data
    which = (
        f"normal{d.normal_class}"
        if d.normal_class is not None
        else f"abnormal{d.abnormal_class or 'default'}"
    )
    model = "" if config.model.name == "skipganomaly" else f"-{config.model.name}"
    return Path("runs") / f"{d.dataset}-{which}{model}-seed{config.train.seed}"


def run(args: argparse.Namespace) -> int:
    from ..runtime import distributed

    try:
        return _train(args)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace) -> int:
    """Train in this process, or as one of the processes torchrun started (rank 0 prints)."""
    from ..runtime.distributed import context_from_env, launched_by_torchrun
    from ..runtime.files import check_output_folder
    from ..training.runs import check_new_run_folder, describe_training, resume_point, train_run

    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)

    resume, note = None, ""
    if args.resume:
        run_dir = Path(args.resume)
        conflicting = [
            f"--{f.replace('_', '-')}"
            for f in TRAIN_FLAGS
            if getattr(args, f, None) not in (None, False) and f != "device"
        ]
        if args.config or args.overrides or args.output or conflicting:
            extra = ", ".join(
                conflicting
                + (["--config"] if args.config else [])
                + (["--set"] if args.overrides else [])
                + (["--output"] if args.output else [])
            )
            raise UserError(f"--resume continues {run_dir} with its stored configuration; drop {extra}")
        resume, config, note = resume_point(run_dir)
        check_output_folder(run_dir, "--resume")
        if args.device:
            config.train.device = args.device
        if resume is not None and resume.epoch >= config.train.epochs and (run_dir / "metrics.json").exists():
            say(f"{run_dir} already finished all {config.train.epochs} epochs; nothing to resume")
            return 0
    else:
        config = resolve_train_config(args)
        run_dir = Path(args.output) if args.output else default_run_dir(config)
        # Before any data is read: a folder that cannot be written, or that holds anything but
        # this run's own start, is refused (nothing of the user's is ever written over).
        check_output_folder(run_dir, "--output")
        check_new_run_folder(run_dir, config)
    started = time.perf_counter()
    context = context_from_env(config.train.device) if launched_by_torchrun() else None

    def announce(trainer) -> None:
        say(trainer.splits.describe())
        if note:
            say(note)
        if resume is not None:
            say(f"resuming {run_dir} after epoch {trainer.start_epoch} of {config.train.epochs}")
        say(describe_training(trainer, run_dir))

    try:
        trained = train_run(
            config,
            run_dir,
            resume=resume,
            progress=False if args.quiet else None,
            context=context,
            on_ready=announce,
        )
    except Exception as exc:
        failed = write_failure(exc, run_dir)
        if failed is None:
            raise
        raise UserError(f"{failed}; {_continue_hint(run_dir)}") from None
    if trained.metrics is not None:
        print_summary(trained.metrics, run_dir / "metrics.json", time.perf_counter() - started)
    return 0


def _continue_hint(run_dir: Path) -> str:
    """What to do after a training stopped by a failed write: what is on disk is intact."""
    from ..formats.checkpoint import resume_checkpoint_path

    if resume_checkpoint_path(run_dir) is not None or (run_dir / "config.yaml").is_file():
        return f"the files written so far are intact; continue with skipganomaly train --resume {run_dir}"
    return "nothing was written; run the same command again"

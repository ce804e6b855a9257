"""Run folders: :func:`train_run`, the one "train or resume a run" that ``skipganomaly train`` and
``skipganomaly reproduce`` share.

A run folder holds ``config.yaml``, ``checkpoints/{best,last}.pt``, ``log.jsonl``, and, once
training finished, ``metrics.json`` and ``scores.csv`` (written by the trainer through
:func:`skipganomaly.evaluation.record.evaluate_run`). Evaluating a finished run again is
:func:`~skipganomaly.evaluation.record.evaluate_run` too (``skipganomaly test``, which writes
``test-<checkpoint>.json`` beside ``metrics.json``).

What may be written where (docs/failure-behaviour.md): :func:`check_new_run_folder` refuses a
folder that holds anything but this run's own start (nothing is ever written over a user's
files or another run); :func:`resume_point` says what a run continues from (its newest
checkpoint, or its ``config.yaml`` when it was stopped before its first epoch ended); and
:func:`prepare_run_folder` tidies what a kill left (temporary files of cut writes, the log lines
of an epoch that did not finish) before training goes on.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import prepare_data
from ..data.base import Splits
from ..formats.checkpoint import Checkpoint, load_checkpoint, resume_checkpoint_path
from ..runtime.distributed import DistributedContext
from ..runtime.files import is_temporary_name, remove_orphan_temporaries, write_text
from ..specs.config import Config, build_config, config_from_dict, flatten_keys, load_yaml
from ..specs.errors import UserError
from .trainer import Trainer

# Settings that change neither what a run computes nor its results: a run folder made with other
# values of these is still the same run.
IGNORED_WHEN_REUSING = {
    "data.root",
    "data.workers",
    "data.cache_dir",
    "data.eval_batch_size",
    "data.skip_bad_images",
    "data.max_memory_mb",
    "data.download",
    "data.max_image_pixels",
    "data.max_unpacked_bytes",
    "data.max_unpacked_files",
    "data.max_unpack_ratio",
    "train.device",
    "train.log_every",
}
# What a run has written before its first epoch ends (a folder holding only these, with the same
# settings, is that run's own start).
START_FILES = {"config.yaml", "log.jsonl", "checkpoints", "tensorboard"}


def config_difference(stored: dict[str, Any], planned: Config) -> str:
    """The first setting in which a stored ``config.yaml`` differs from ``planned``, as
    ``key=stored, not planned``; empty when they describe the same run."""
    stored_flat = flatten_keys(stored)
    planned_flat = flatten_keys(planned.to_dict())
    defaults = flatten_keys(build_config({}).to_dict())
    for key in sorted(set(stored_flat) | set(planned_flat)):
        if key in IGNORED_WHEN_REUSING:
            continue
        if key not in stored_flat and planned_flat.get(key) == defaults.get(key):
            continue  # a setting added to the package after the run, at its default
        if key == "eval.paper_each_epoch" and stored_flat.get(key) and not planned_flat.get(key):
            continue  # a run that also scored the paper protocol serves one that does not need it
        if stored_flat.get(key) != planned_flat.get(key):
            return f"{key}={stored_flat.get(key)!r}, not {planned_flat.get(key)!r}"
    return ""


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return load_yaml(path)
    except UserError:
        return None


def check_new_run_folder(run_dir: str | os.PathLike, config: Config) -> None:
    """Refuse to start a run in ``run_dir`` unless it is absent, empty, or this run's own start
    (its ``config.yaml`` with the same settings, at most a log and no checkpoint yet: a run
    stopped in its first epoch). A finished run, an interrupted one, another run's settings or
    any other file: one line saying what to do instead."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"--output {run_dir} is a file, not a folder; choose another --output")
    entries = sorted(p.name for p in run_dir.iterdir())
    if not entries:
        return
    has_config = (run_dir / "config.yaml").is_file()
    if (run_dir / "metrics.json").is_file() and (has_config or (run_dir / "checkpoints").is_dir()):
        raise UserError(
            f"--output {run_dir} holds a finished run; choose another --output (or empty the folder to train it again)"
        )
    resumable = resume_checkpoint_path(run_dir)
    if resumable is not None:
        raise UserError(
            f"--output {run_dir} holds an interrupted run ({resumable.name}); continue it with --resume {run_dir}, "
            "or choose another --output"
        )
    checkpoints = run_dir / "checkpoints"
    foreign = [name for name in entries if name not in START_FILES and not is_temporary_name(name)]
    if checkpoints.is_dir():
        foreign += [
            f"checkpoints/{p.name}" for p in sorted(checkpoints.iterdir()) if not is_temporary_name(p.name)
        ]
    stored = _stored_config(run_dir)
    if foreign or stored is None or not _is_config(stored):
        what = f"it holds {foreign[0]}" if foreign else "its config.yaml is not a run's"
        raise UserError(
            f"--output {run_dir} is not empty and is not a run ({what}); choose another --output or empty it"
        )
    difference = config_difference(stored, config)
    if difference:
        raise UserError(
            f"--output {run_dir} holds the start of another run ({difference}); choose another --output, "
            f"empty it, or continue that run with --resume {run_dir}"
        )


def _is_config(stored: dict[str, Any]) -> bool:
    try:
        config_from_dict(stored)
    except UserError:
        return False
    return True


def resume_point(run_dir: str | os.PathLike) -> tuple[Checkpoint | None, Config, str]:
    """What ``train --resume RUN_DIR`` continues from: the run's newest checkpoint (``last.pt``,
    or ``best.pt`` when a kill cut the first write of ``last.pt``), or, for a run stopped before
    its first epoch ended, nothing but its ``config.yaml`` (the run starts again). Returns the
    checkpoint (or None), the run's configuration and a note for the user (empty when there is
    nothing to say)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"--resume {run_dir}: no such run folder; pass the --output folder of an interrupted training run"
        )
    path = resume_checkpoint_path(run_dir)
    if path is not None:
        checkpoint = load_checkpoint(path)
        note = (
            ""
            if path.name == "last.pt"
            else f"continuing from {path} (epoch {checkpoint.epoch}): last.pt is missing"
        )
        return checkpoint, checkpoint.config, note
    stored = _stored_config(run_dir)
    if stored is None:
        raise UserError(
            f"--resume {run_dir}: it holds no run to continue (no checkpoints/last.pt, no config.yaml); "
            f"start one with skipganomaly train --output {run_dir}"
        )
    try:
        config = config_from_dict(stored)
    except UserError as exc:
        raise UserError(f"--resume {run_dir}: its config.yaml cannot be used ({exc})") from None
    note = f"{run_dir} has no checkpoint yet (it stopped before its first epoch ended): starting it again"
    return None, config, note


def prepare_run_folder(run_dir: str | os.PathLike, epoch: int) -> None:
    """Before training (again) in ``run_dir`` from ``epoch`` epochs done: remove the temporary
    files of writes a kill cut short, and drop the log records after epoch ``epoch`` (the step
    lines of an epoch that did not finish, which the run writes again), atomically."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_orphan_temporaries(folder)
    truncate_log(run_dir / "log.jsonl", epoch)


def truncate_log(path: Path, epoch: int) -> None:
    """Keep the records of ``log.jsonl`` up to the end of epoch ``epoch`` (none for 0) and drop
    the rest, including a last line a kill cut in half; rewritten atomically."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept: list[str] = []
    end = 0  # lines kept: through the record of epoch ``epoch``
    for line in lines:
        if not line.endswith("\n"):
            break  # cut by a kill
        try:
            record = json.loads(line)
        except ValueError:
            break
        kept.append(line)
        if isinstance(record, dict) and record.get("event") == "epoch" and record.get("epoch") == epoch:
            end = len(kept)
    if epoch > 0 and end == 0:  # the epoch's record is not there (an older log): keep what is whole
        end = len(kept)
    if end != len(lines):
        write_text(path, "".join(kept[:end]))


@dataclass
class TrainedRun:
    """What :func:`train_run` did: the data it read, the trainer and the metrics (None on the
    processes other than rank 0 of a torchrun job)."""

    splits: Splits
    trainer: Trainer
    metrics: dict[str, Any] | None


def train_run(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    resume: Checkpoint | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    context: DistributedContext | None = None,
    on_ready: Callable[[Trainer], None] | None = None,
    on_epoch: Callable[[], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainedRun:
    """Read the data, build the trainer, continue from ``resume`` (a ``last`` checkpoint of this
    run) if given, and train to the end; the trainer writes the run folder.

    ``log`` receives the trainer's per-epoch lines; ``on_ready(trainer)`` runs once the trainer is
    ready (restored), before the first epoch, so a caller can say what is about to happen;
    ``on_epoch()`` after every epoch (progress bars); ``on_record(record)`` after every epoch with
    its history record (``epoch_record``: ``selection``, ``val`` ...; ``tune`` prunes on it), once
    its checkpoints are written, so an exception it raises stops the run where it can resume."""
    if resume is not None and config.train.threads == 0 and not (context is not None and context.enabled):
        # The count this run started with (fixed from the machine then): the same threads, the
        # same sums, so the resumed run equals an uninterrupted one even if OMP_NUM_THREADS or
        # the cores changed in between.
        recorded = recorded_threads(run_dir)
        if recorded is not None:
            config = copy.deepcopy(config)
            config.train.threads = recorded
    splits = prepare_data(config.data)
    trainer = Trainer(config, splits, Path(run_dir), log=log, progress=progress, context=context)
    if resume is not None:
        trainer.restore(resume)
    if trainer.is_main:
        prepare_run_folder(run_dir, trainer.start_epoch)
    if on_epoch is not None:
        trainer.callbacks.append(lambda _trainer, _epoch: on_epoch())
    if on_record is not None:
        trainer.callbacks.append(lambda done, _epoch: on_record(done.history[-1]))
    if on_ready is not None:
        on_ready(trainer)
    history = trainer.fit()
    if trainer.is_main:
        # The training images' domain, for scoring's out-of-domain warning (scoring.domain).
        from ..scoring.domain import domain_of, write_domain

        write_domain(run_dir, domain_of(splits.train, config.data.image_size, splits.channels))
    return TrainedRun(splits, trainer, history)


def recorded_threads(run_dir: str | os.PathLike) -> int | None:
    """The thread count a run's first start recorded in its ``log.jsonl``, or None."""
    try:
        with open(Path(run_dir) / "log.jsonl", encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("event") == "start":
                    threads = record.get("threads")
                    return threads if isinstance(threads, int) and threads > 0 else None
    except OSError:
        return None
    return None


def describe_training(trainer: Trainer, run_dir: str | os.PathLike) -> str:
    """The line printed before training: model, preset values, epochs, where and the run folder."""
    config, context = trainer.config, trainer.context
    t = config.train
    where = (
        f"{trainer.device}"
        if not context.enabled
        else f"{context.world_size} processes ({trainer.device.type})"
    )
    runtime = trainer.precision.describe()
    if trainer.device.type == "cpu" and context.enabled:
        plural = "" if trainer.threads == 1 else "s"
        where += f", {trainer.threads} thread{plural} each"
    elif trainer.device.type == "cpu":
        runtime += f"; {trainer.thread_chooser.describe()}"
    extras = []
    if t.w_rot > 0:
        extras.append(f"w_rot {t.w_rot:g}")
    if t.ema_decay > 0:
        extras.append(f"weight average {t.ema_decay:g}")
    if getattr(config.model, "score_terms", ""):
        chosen = " chosen on validation" if getattr(config.model, "select_terms", True) else ""
        extras.append(f"score terms {config.model.score_terms}{chosen}")
    return (
        f"training {config.model.name} ({t.preset} preset: lr {t.lr:g}, "
        f"w_adv {t.w_adv:g}, w_con {t.w_con:g}, w_lat {t.w_lat:g}{''.join(', ' + e for e in extras)}) "
        f"for {t.epochs} epochs on {where}; run folder {run_dir}\n{runtime}"
    )

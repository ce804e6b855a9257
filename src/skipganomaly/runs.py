"""Run folders: :func:`train_run`, the one "train or resume a run" that ``skipganomaly train`` and
``skipganomaly reproduce`` share.

A run folder holds ``config.yaml``, ``checkpoints/{best,last}.pt``, ``log.jsonl``, and, once
training finished, ``metrics.json`` and ``scores.csv`` (written by the trainer through
:func:`skipganomaly.protocols.record.evaluate_run`). Evaluating a finished run again is
:func:`~skipganomaly.protocols.record.evaluate_run` too (``skipganomaly test``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import Config
from .data import prepare_data
from .data.base import Splits
from .distributed import DistributedContext
from .trainer import Trainer


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
) -> TrainedRun:
    """Read the data, build the trainer, continue from ``resume`` (a ``last`` checkpoint of this
    run) if given, and train to the end; the trainer writes the run folder.

    ``log`` receives the trainer's per-epoch lines; ``on_ready(trainer)`` runs once the trainer is
    ready (restored), before the first epoch, so a caller can say what is about to happen;
    ``on_epoch()`` after every epoch (progress bars)."""
    splits = prepare_data(config.data)
    trainer = Trainer(config, splits, Path(run_dir), log=log, progress=progress, context=context)
    if resume is not None:
        trainer.restore(resume)
    if on_epoch is not None:
        trainer.callbacks.append(lambda _trainer, _epoch: on_epoch())
    if on_ready is not None:
        on_ready(trainer)
    return TrainedRun(splits, trainer, trainer.fit())


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
    return (
        f"training {config.model.name} ({t.preset} preset: lr {t.lr:g}, "
        f"w_adv {t.w_adv:g}, w_con {t.w_con:g}, w_lat {t.w_lat:g}) "
        f"for {t.epochs} epochs on {where}; run folder {run_dir}\n{runtime}"
    )

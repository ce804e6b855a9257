"""The training loop shared by every model: the epochs, their steps, discriminator
re-initialisation, and what each epoch ends with (validation, selection, checkpoints, the log).

The parts live beside it: one optimisation step and the learning-rate schedule (:mod:`.steps`),
the model a run starts from and its precision (:mod:`.setup`), each epoch's validation, record
and log line (:mod:`.validation`), the checkpoint's state (:mod:`.checkpointing`) and the log
file (:mod:`.runlog`).

A model plugs in through four methods: ``parameter_groups()`` (``generator`` and
``discriminator`` parameter lists, one Adam optimiser each), ``training_losses(x, weights,
input_noise_std)`` (whose ``parts`` hold at least ``g`` and ``d``, generator terms named ``g_*``),
``reset_discriminator()`` and ``score(x, score_lambda, details)``; and ``score_needs_grad``
(scoring under autograd, see :func:`skipganomaly.scoring.engine.score_set`). For multi-process training
(torchrun) it also names its networks, ``networks()``, and takes wrapped stand-ins for them in
``training_losses(..., generator=, discriminator=)``; see runtime/distributed.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.base import Splits
from ..data.corruptions import corrupt
from ..data.loading import (
    BadImageCounter,
    epoch_order,
    iterate_batches,
    random_horizontal_flip,
    to_model_input,
)
from ..evaluation.paper import score_paper_protocol
from ..evaluation.record import evaluate_run, write_scores_csv
from ..formats.checkpoint import Checkpoint, Selection, checkpoint_path, load_checkpoint, save_checkpoint
from ..models.objective import LossWeights
from ..runtime import distributed
from ..runtime.device import adam, compile_networks, configure_device, resolve_device, seed_everything
from ..runtime.distributed import DistributedContext
from ..runtime.files import write_json, write_text
from ..runtime.threads import ThreadChooser
from ..scoring.decisions import fit_normalization, selection_value
from ..scoring.engine import ScoredSet
from ..scoring.normalization import ScoreNormalization
from ..specs.config import Config, dump_yaml
from ..specs.corruptions import parse_corruptions
from ..specs.errors import UserError
from ..specs.protocols import PAPER
from .checkpointing import restore_trainer, trainer_checkpoint
from .ema import WeightAverage
from .runlog import RunLog
from .setup import build_training_model, training_precision, wrap_for_processes
from .steps import lr_factor, optimisation_step
from .tensorboard import open_event_mirror
from .validation import Validation, epoch_line, epoch_record

__all__ = ["Trainer", "RunLog", "lr_factor", "optimisation_step"]


class Trainer:
    def __init__(
        self,
        config: Config,
        splits: Splits,
        run_dir: str | Path,
        *,
        log: Callable[[str], None] = print,
        progress: bool | None = None,
        context: DistributedContext | None = None,
    ):
        self.config = config
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.context = context or DistributedContext()
        self.is_main = self.context.is_main
        self.log = log if self.is_main else (lambda message: None)
        self.progress = progress if self.is_main else False
        t = config.train
        self.device = self.context.device if self.context.enabled else resolve_device(t.device)
        self.channels = splits.channels
        configure_device(self.device)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.context.enabled else 1
        self.thread_chooser = ThreadChooser(t.threads, local_processes)
        if self.device.type == "cpu":
            self.thread_chooser.start()

        seed_everything(t.seed)
        self.model = build_training_model(config, splits, self.device, self.context)
        self.optimizers = {
            name: adam(params, t.lr, (t.beta1, t.beta2), self.device)
            for name, params in self.model.parameter_groups().items()
        }
        self.weights = LossWeights(adversarial=t.w_adv, contextual=t.w_con, latent=t.w_lat, rotation=t.w_rot)
        self.corruptions = parse_corruptions(t.corruptions)
        self.precision = training_precision(
            config, self.model, splits, self.device, self.weights, self.threads, self.context
        )
        self.amp_dtype = self.precision.dtype
        self.wrapped = wrap_for_processes(self.model, config, self.context)
        if t.compile != "off":  # each network (generator, discriminator, encoder...) in place
            compile_networks(self.model.children(), t.compile)
        # The improved recipe's averaged weights (train.ema_decay), the model that scores.
        self.average = WeightAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.validation = Validation(
            config, splits, self.device, self.context, self.thread_chooser, self.model
        )
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.best: Selection | None = None
        self.best_scores: tuple[ScoredSet, ScoredSet] | None = None
        self.score_terms_used: list[str] | None = None  # the improved score's terms this epoch
        self.callbacks: list[Callable[[Trainer, int], None]] = []
        self.elapsed = 0.0

    @property
    def scoring_model(self) -> torch.nn.Module:
        """The weights that are validated, selected and stored to score: the average, if any."""
        return self.model if self.average is None else self.average.model

    @property
    def threads(self) -> int:
        return self.thread_chooser.threads

    # ------------------------------------------------------------------ state
    def _checkpoint(self, epoch: int, normalization: ScoreNormalization) -> Checkpoint:
        """The checkpoint; in multi-process runs every rank must call it (RNG states are gathered)."""
        return trainer_checkpoint(self, epoch, normalization)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a ``last`` checkpoint: weights, optimisers, RNG, history, selection."""
        restore_trainer(self, checkpoint)

    # ------------------------------------------------------------------ steps
    def _set_lr(self, epoch: int) -> float:
        t = self.config.train
        lr = t.lr * lr_factor(epoch, t.epochs, t.lr_decay, t.lr_decay_start)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimisation step of both networks on batch ``x``; returns the loss terms (averaged
        over the processes in multi-process runs). With ``train.corruptions``, a share of the
        batch is corrupted first (from the global stream, which resume restores)."""
        t = self.config.train
        corrupted = (
            corrupt(x, self.corruptions, t.corruption_fraction, scale=t.blob_scale)
            if self.corruptions
            else None
        )
        losses = optimisation_step(
            self.model, self.optimizers, x, self.weights, t.input_noise_std, self.device,
            self.amp_dtype, self.wrapped, corrupted,
        )  # fmt: skip
        if self.average is not None:
            self.average.update(self.model)
        names = list(losses.parts)
        parts = distributed.mean_over_ranks(
            torch.stack([losses.parts[k].detach().float() for k in names]), self.context
        )
        return dict(zip(names, parts.tolist(), strict=True))  # one device sync per step

    def _reset_discriminator(self, epoch: int, step: int, d_loss: float, runlog: RunLog) -> None:
        """D's loss fell under ``train.d_reinit_threshold``: D starts again (the same decision on
        every rank), its optimiser's state and its average with it."""
        self.model.reset_discriminator()
        if self.wrapped:  # re-initialised from each rank's own stream: take rank 0's
            distributed.broadcast_module(self.model.networks()["discriminator"])
        self.optimizers["discriminator"].state.clear()
        if self.average is not None:  # the old average of D means nothing now
            self.average.copy_from(self.model.discriminator, self.average.model.discriminator)
        runlog.write({"event": "d_reinit", "epoch": epoch + 1, "step": step + 1, "d": d_loss})
        threshold = self.config.train.d_reinit_threshold
        self.log(f"  discriminator loss {d_loss:.2e} < {threshold:g}: re-initialised D")

    def _epoch_batches(self, epoch: int, counter: BadImageCounter):
        """The epoch's training batches in its seeded order (this process's share under torchrun),
        and how many steps the epoch has."""
        cfg, train = self.config, self.splits.train
        bs = min(cfg.data.batch_size, len(train))
        steps = len(train) // bs
        order = epoch_order(len(train), cfg.train.seed, epoch)
        if self.context.enabled:
            order = distributed.shard_order(order, bs, self.context.rank, self.context.world_size)
            bs //= self.context.world_size
        batches = iterate_batches(
            train, bs, image_size=cfg.data.image_size, channels=self.channels, order=order, drop_last=True,
            workers=cfg.data.workers, skip_bad=cfg.data.skip_bad_images, counter=counter,
            device=self.device, max_pixels=cfg.data.max_image_pixels,
        )  # fmt: skip
        return batches, steps

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int, runlog: RunLog) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        sums: dict[str, float] = {}
        count, reinits = 0, 0
        counter = BadImageCounter()
        batches, steps = self._epoch_batches(epoch, counter)
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            leave=False,
            disable=None if self.progress is None else not self.progress,
            dynamic_ncols=True,
        )
        threads = self.thread_chooser
        if self.device.type == "cpu":
            threads.apply()
        for step, batch in enumerate(batches):
            if len(batch.images) < 2 and not self.context.enabled:
                continue  # BatchNorm cannot train on one image (a bad file left a batch of one)
            x = to_model_input(batch.images, self.device, cfg.train.channels_last)
            if cfg.train.augment_flip:
                x = random_horizontal_flip(x)
            started, decided = time.perf_counter(), len(threads.decisions)
            values = self.train_step(x)
            if self.device.type == "cpu":
                threads.step_done(time.perf_counter() - started)
                for decision in threads.decisions[decided:]:
                    runlog.write({"event": "threads", "epoch": epoch + 1, "step": step + 1} | decision)
            if values["d"] < cfg.train.d_reinit_threshold:  # the same decision on every rank
                self._reset_discriminator(epoch, step, values["d"], runlog)
                reinits += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % cfg.train.log_every == 0:
                runlog.write({"event": "step", "epoch": epoch + 1, "step": step + 1} | values)
            bar.update(1)
            if step % cfg.train.log_every == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()})
        bar.close()
        if count == 0:
            raise UserError(
                "no training batch could be formed; the training set needs at least 2 readable images"
            )
        means = {k: v / count for k, v in sums.items()}
        means["d_reinits"] = reinits
        means["skipped_images"] = counter.skipped
        return means

    def _open_log(self) -> RunLog:
        """The run folder's start (config.yaml, checkpoints/) and its log, on rank 0; a log that
        writes nothing elsewhere."""
        cfg = self.config
        if not self.is_main:
            return RunLog(None)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        steps_per_epoch = len(self.splits.train) // max(min(cfg.data.batch_size, len(self.splits.train)), 1)
        return RunLog(self.run_dir / "log.jsonl", open_event_mirror(self.run_dir, steps_per_epoch))

    def fit(self) -> dict[str, Any]:
        runlog = self._open_log()
        runlog.write(
            {
                "event": "start",
                "resumed_from_epoch": self.start_epoch,
                "counts": self.splits.counts(),
                "skipped_bad_images": self.splits.info.skipped_bad_images,
                "processes": self.context.world_size,
                "device": str(self.device),
                "threads": self.threads,
                "precision": self.precision.name,
                "precision_reason": self.precision.reason,
            }
        )
        for epoch in range(self.start_epoch, self.config.train.epochs):
            self.run_epoch(epoch, runlog)
        return self.finish(runlog)

    def run_epoch(self, epoch: int, runlog: RunLog) -> None:
        """One epoch: train, validate, select, checkpoint and log (``epoch`` is 0-based)."""
        cfg = self.config
        started = time.perf_counter()
        lr = self._set_lr(epoch)
        losses = self.train_epoch(epoch, runlog)
        val, test = self.score(calibrate=True)
        normalization = fit_normalization(val, cfg.eval)
        selection = selection_value(
            val, cfg.eval.selection_metric, epoch=epoch + 1, synthetic=self.validation.synthetic_scores
        )
        paper = None
        if cfg.eval.paper_each_epoch and self.splits.protocol != PAPER.name:
            paper = score_paper_protocol(self.scoring_model, self.splits, cfg, self.device, self.amp_dtype)
        seconds = time.perf_counter() - started
        self.elapsed += seconds
        record = epoch_record(
            epoch + 1, lr, losses, val, test, selection, seconds, paper, self.score_terms_used,
            self.validation.synthetic_record, self.validation.map_record, self.validation.pooling_record,
        )  # fmt: skip
        # Ties keep the earlier epoch, except on the synthetic validation, which can saturate at 1
        # on easy data: there the later (longer-trained) epoch wins a tie.
        later_wins = selection[0] == "synthetic_val.auroc"
        improved = (
            self.best is None
            or selection[1] > self.best.value
            or (later_wins and selection[1] == self.best.value)
        )
        if improved:
            self.best = Selection(epoch=epoch + 1, metric=selection[0], value=selection[1])
            self.best_scores = (val, test)
        self.history.append(record)
        runlog.write({"event": "epoch"} | record | {"best": improved})
        checkpoint = self._checkpoint(epoch + 1, normalization)
        if self.is_main:
            if improved:
                save_checkpoint(checkpoint_path(self.run_dir, "best"), checkpoint)
            save_checkpoint(checkpoint_path(self.run_dir, "last"), checkpoint)
        self.log(epoch_line(record, cfg.train.epochs, improved))
        for callback in self.callbacks:
            callback(self, epoch + 1)

    def score(self, calibrate: bool = False) -> tuple[ScoredSet, ScoredSet]:
        """Validation and test scores of the scoring weights (sharded over the processes); with
        ``calibrate``, after fitting what the improved score keeps besides weights
        (:meth:`.validation.Validation.score`)."""
        val, test, terms = self.validation.score(self.scoring_model, self.amp_dtype, calibrate)
        if terms is not None:
            self.score_terms_used = terms
        return val, test

    def finish(self, runlog: RunLog) -> dict[str, Any] | None:
        """Write ``metrics.json`` and ``scores.csv`` for the best checkpoint (rank 0; the other
        processes return None)."""
        best = load_checkpoint(checkpoint_path(self.run_dir, "best")) if self.is_main else None
        if self.best_scores is None:  # resumed after the best epoch: score the best weights again
            state = distributed.broadcast_object(best.scoring_state_dict if best else None, self.context)
            self.scoring_model.load_state_dict(state)
            self.best_scores = self.score()
        if not self.is_main:
            return None
        evaluation = evaluate_run(
            best,
            self.splits,
            self.config,
            self.device,
            self.amp_dtype,
            scores=self.best_scores,
            history=self.history,
        )
        metrics = evaluation.metrics
        metrics["wall_time_s"] = self.elapsed
        write_json(self.run_dir / "metrics.json", metrics)
        scored = {"val": evaluation.val, "test": evaluation.test}
        write_scores_csv(self.run_dir / "scores.csv", self.splits, scored, evaluation.normalization)
        runlog.write(
            {"event": "end", "epoch_best": metrics["epoch_best"], "test_auroc": metrics["test"]["auroc"]}
        )
        return metrics

"""The training loop shared by every model: optimisers, learning-rate decay, discriminator
re-initialisation, per-epoch validation and test scoring, model selection, checkpoints, logs.

A model plugs in through four methods: ``parameter_groups()`` (``generator`` and
``discriminator`` parameter lists, one Adam optimiser each), ``training_losses(x, weights,
input_noise_std)`` (whose ``parts`` hold at least ``g`` and ``d``, generator terms named ``g_*``),
``reset_discriminator()`` and ``score(x, score_lambda, details)``; and ``score_needs_grad``
(scoring under autograd, see :func:`skipganomaly.scoring.engine.score_set`). For multi-process training
(torchrun) it also names its networks, ``networks()``, and takes wrapped stand-ins for them in
``training_losses(..., generator=, discriminator=)``; see distributed.py.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import Splits
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
from ..models import build_model, model_args
from ..models.blocks import channels_last_where_library
from ..models.objective import LossWeights, TrainingLosses
from ..runtime import distributed
from ..runtime.device import (
    adam,
    autocast,
    compile_networks,
    configure_device,
    resolve_device,
    seed_everything,
)
from ..runtime.distributed import DistributedContext
from ..runtime.files import write_json, write_text
from ..runtime.precision import choose_precision, cpu_identity, probe_precisions
from ..runtime.threads import ThreadChooser
from ..scoring.decisions import (
    choose_terms,
    fit_normalization,
    fit_term_statistics,
    selection_text,
    selection_value,
    standardize_terms,
)
from ..scoring.engine import ScoredSet, ScoringOptions, feature_bank, score_splits
from ..scoring.metrics import auroc
from ..scoring.normalization import ScoreNormalization
from ..specs.config import Config, dump_yaml
from ..specs.errors import UserError
from ..specs.protocols import PAPER
from .ema import WeightAverage
from .tensorboard import open_event_mirror


class RunLog:
    """JSON lines in ``RUN_DIR/log.jsonl``: per-step losses and per-epoch metrics; ``mirror``
    (TensorBoard, when installed) receives every record too. With no path (processes other than
    rank 0) it writes nothing."""

    def __init__(self, path: Path | None, mirror: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.mirror = mirror

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")
        if self.mirror is not None:
            self.mirror(record)


def lr_factor(epoch: int, epochs: int, decay: str, decay_start: float) -> float:
    """Learning-rate multiplier of (0-based) ``epoch``: constant, then a linear ("lambda") decay.

    With ``linear`` the rate stays at its initial value for the first ``decay_start`` fraction of
    the epochs and then falls linearly, reaching 1/(k+1) of it in the last epoch, k being the
    number of decaying epochs (the pix2pix rule the official code defines but never steps).
    """
    if decay == "none":
        return 1.0
    start = int(round(decay_start * epochs))
    decaying = epochs - start
    if epoch < start or decaying <= 0:
        return 1.0
    return 1.0 - (epoch - start + 1) / (decaying + 1)


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of process ``rank``'s random stream (input noise, D re-initialisation)."""
    return (seed * 1_000_003 + rank * 7_919 + epoch) % 2**63


def _rng_state(device: torch.device) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def optimisation_step(
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    x: torch.Tensor,
    weights: LossWeights,
    input_noise_std: float,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    wrapped: dict[str, torch.nn.Module] | None = None,
) -> TrainingLosses:
    """One optimisation step of both networks on batch ``x``: the losses (under autocast), each
    back-propagated into its own network's parameters only, then both optimisers step."""
    with autocast(device, amp_dtype):
        losses = model.training_losses(x, weights, input_noise_std, **(wrapped or {}))
    params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    # Both gradients come from the same forward pass, before either network steps,
    # each loss reaching only its own network's parameters.
    losses.generator.backward(inputs=params["generator"], retain_graph=True)
    losses.discriminator.backward(inputs=params["discriminator"])
    for opt in optimizers.values():
        opt.step()
    return losses


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
        m = config.model
        args = model_args(m, config.data.image_size, self.channels)
        if "knn" in str(args.get("score_terms", "")):  # the bank holds each training image at most once
            args["knn_bank"] = min(args["knn_bank"], len(splits.train))
        self.model = build_model(m.name, **args)
        if t.sync_batchnorm and self.context.enabled:
            if self.device.type != "cuda":
                raise UserError(
                    "train.sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                    "drop it for CPU processes"
                )
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device)
        if t.channels_last and self.device.type == "cpu":
            self._channels_last_weights()
        elif t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizers = {
            name: adam(params, t.lr, (t.beta1, t.beta2), self.device)
            for name, params in self.model.parameter_groups().items()
        }
        self.weights = LossWeights(adversarial=t.w_adv, contextual=t.w_con, latent=t.w_lat, rotation=t.w_rot)
        self.precision = self._choose_precision()
        self.amp_dtype = self.precision.dtype
        self.wrapped: dict[str, torch.nn.Module] = {}
        if self.context.enabled:
            if config.data.skip_bad_images:
                raise UserError(
                    "--skip-bad-images would give the processes unequal batches under torchrun; remove the "
                    "unreadable images or train in one process"
                )
            if not hasattr(self.model, "networks"):
                raise UserError(f"model {m.name!r} does not support multi-process training; run one process")
            # Same initial weights everywhere (wrapping broadcasts rank 0's), own noise per rank.
            self.wrapped = {
                name: distributed.wrap(network, self.context)
                for name, network in self.model.networks().items()
            }
            torch.manual_seed(rank_seed(t.seed, self.context.rank))
        if t.compile != "off":  # each network (generator, discriminator, encoder...) in place
            compile_networks(self.model.children(), t.compile)
        # The improved recipe's averaged weights (train.ema_decay), the model that scores.
        self.average = WeightAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        # The training images whose features the knn score term compares with: fixed per run.
        self._bank_images = None
        bank_size = getattr(self.model, "feature_bank", None)
        if bank_size is not None:
            pick = np.random.default_rng(t.seed).choice(len(splits.train), len(bank_size), replace=False)
            self._bank_images = splits.train.subset(np.sort(pick))
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.best: Selection | None = None
        self.best_scores: tuple[ScoredSet, ScoredSet] | None = None
        self.score_terms_used: list[str] | None = None  # the improved score's terms this epoch
        self.callbacks: list[Callable[[Trainer, int], None]] = []
        self.elapsed = 0.0

    # ------------------------------------------------------------------ state
    def _checkpoint(self, epoch: int, normalization: ScoreNormalization) -> Checkpoint:
        """The checkpoint; in multi-process runs every rank must call it (RNG states are gathered)."""
        rng = _rng_state(self.device)
        if self.context.enabled:
            rng = dict(
                rng, ranks=distributed.gather_objects(rng, self.context), world_size=self.context.world_size
            )
        return Checkpoint(
            model_name=self.config.model.name,
            model_args=dict(self.model.args),
            config=self.config,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            ema_state_dict=None
            if self.average is None
            else {k: v.detach().cpu() for k, v in self.average.model.state_dict().items()},
            ema_updates=0 if self.average is None else self.average.updates,
            normalization=normalization,
            epoch=epoch,
            best=self.best,
            history=self.history,
            data=self.splits.info,
            optimizers={name: opt.state_dict() for name, opt in self.optimizers.items()},
            rng=rng,
            elapsed_s=self.elapsed,
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a ``last`` checkpoint: weights, optimisers, RNG, history, selection."""
        self.model.load_state_dict(checkpoint.state_dict)
        if self.average is not None:
            if checkpoint.ema_state_dict is None:
                raise UserError(
                    "this run was trained without train.ema_decay; resume it with its own settings"
                )
            self.average.model.load_state_dict(checkpoint.ema_state_dict)
            self.average.updates = checkpoint.ema_updates
        for name, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint.optimizers[name])
        rng = checkpoint.rng
        if self.context.enabled:
            if rng.get("world_size") == self.context.world_size:
                _set_rng_state(rng["ranks"][self.context.rank], self.device)
            else:  # another number of processes: fresh, still seeded, per-rank streams
                torch.manual_seed(rank_seed(self.config.train.seed, self.context.rank, checkpoint.epoch))
                self.log(
                    f"resuming with {self.context.world_size} processes after a run with "
                    f"{rng.get('world_size', 1)}: batches are the same, random streams are re-seeded"
                )
        else:
            _set_rng_state(rng, self.device)
        self.history = list(checkpoint.history)
        self.best = checkpoint.best
        self.start_epoch = checkpoint.epoch
        self.elapsed = checkpoint.elapsed_s

    # ------------------------------------------------------------------ loop
    def _set_lr(self, epoch: int) -> float:
        t = self.config.train
        lr = t.lr * lr_factor(epoch, t.epochs, t.lr_decay, t.lr_decay_start)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimisation step of both networks on batch ``x``; returns the loss terms (averaged
        over the processes in multi-process runs)."""
        losses = optimisation_step(
            self.model, self.optimizers, x, self.weights, self.config.train.input_noise_std, self.device,
            self.amp_dtype, self.wrapped,
        )  # fmt: skip
        if self.average is not None:
            self.average.update(self.model)
        names = list(losses.parts)
        parts = distributed.mean_over_ranks(
            torch.stack([losses.parts[k].detach().float() for k in names]), self.context
        )
        return dict(zip(names, parts.tolist(), strict=True))  # one device sync per step

    @property
    def scoring_model(self) -> torch.nn.Module:
        """The weights that are validated, selected and stored to score: the average, if any."""
        return self.model if self.average is None else self.average.model

    @property
    def threads(self) -> int:
        return self.thread_chooser.threads

    def _choose_precision(self):
        """``train.precision``; for ``auto`` on a CPU with native bf16, the faster of fp32 and bf16
        as measured on this model and a training batch (or as measured before, cached). Under
        torchrun rank 0 decides for every rank."""
        cfg = self.config
        fields = cpu_identity() | {
            "model": cfg.model.name,
            "args": dict(self.model.args),
            "batch": min(cfg.data.batch_size, len(self.splits.train)),
            "threads": self.threads,
            "channels_last": cfg.train.channels_last,
            "device": str(self.device),
        }
        choice = choose_precision(
            cfg.train.precision, self.device, probe=self._probe_precisions, fields=fields
        ) if self.is_main or cfg.train.precision != "auto" else None  # fmt: skip
        if self.context.enabled and cfg.train.precision == "auto":
            choice = distributed.broadcast_object(choice, self.context)
        return choice

    def _channels_last_weights(self) -> None:
        """Channels-last weights only for the convolutions oneDNN runs (models.blocks.
        channels_last_where_library), found by one forward pass in eval mode (no BatchNorm
        update) on two images of the training shape; the random stream is left as it was."""
        cfg = self.config
        x = torch.zeros(2, self.channels, cfg.data.image_size, cfg.data.image_size, device=self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        weights = LossWeights(adversarial=cfg.train.w_adv, contextual=cfg.train.w_con, latent=cfg.train.w_lat)
        rng = _rng_state(self.device)
        self.model.eval()
        try:
            channels_last_where_library(self.model, lambda: self.model.training_losses(x, weights))
        finally:
            self.model.train()
            _set_rng_state(rng, self.device)

    def _probe_precisions(self) -> dict[str, list[float]]:
        """Seconds per training step in fp32 and bf16 (runtime.probe_precisions), on copies of the
        model and optimisers and the first training batch; the run's own weights, optimisers and
        random stream are left as they were."""
        cfg = self.config
        bs = min(cfg.data.batch_size, len(self.splits.train))
        batch = next(
            iterate_batches(
                self.splits.train, bs, image_size=cfg.data.image_size, channels=self.channels,
                drop_last=True, workers=0, skip_bad=True, device=self.device,
            )
        )  # fmt: skip
        x = to_model_input(batch.images, self.device, cfg.train.channels_last)
        model = copy.deepcopy(self.model).train()
        optimizers = {
            name: adam(params, cfg.train.lr, (cfg.train.beta1, cfg.train.beta2), self.device)
            for name, params in model.parameter_groups().items()
        }
        rng = _rng_state(self.device)

        def step(name: str) -> float:
            started = time.perf_counter()
            losses = optimisation_step(
                model, optimizers, x, self.weights, cfg.train.input_noise_std, self.device,
                torch.bfloat16 if name == "bf16" else None,
            )  # fmt: skip
            losses.discriminator.item()  # wait for the step (GPUs)
            return time.perf_counter() - started

        try:
            return probe_precisions(step)
        finally:
            _set_rng_state(rng, self.device)

    def train_epoch(self, epoch: int, runlog: RunLog) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        train = self.splits.train
        world, rank = self.context.world_size, self.context.rank
        bs = min(cfg.data.batch_size, len(train))
        steps = len(train) // bs
        order = epoch_order(len(train), cfg.train.seed, epoch)
        if self.context.enabled:
            order = distributed.shard_order(order, bs, rank, world)
            bs //= world
        sums: dict[str, float] = {}
        count, reinits = 0, 0
        counter = BadImageCounter()
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            leave=False,
            disable=None if self.progress is None else not self.progress,
            dynamic_ncols=True,
        )
        batches = iterate_batches(
            train,
            bs,
            image_size=cfg.data.image_size,
            channels=self.channels,
            order=order,
            drop_last=True,
            workers=cfg.data.workers,
            skip_bad=cfg.data.skip_bad_images,
            counter=counter,
            device=self.device,
            max_pixels=cfg.data.max_image_pixels,
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
                self.model.reset_discriminator()
                if self.wrapped:  # re-initialised from each rank's own stream: take rank 0's
                    distributed.broadcast_module(self.model.networks()["discriminator"])
                self.optimizers["discriminator"].state.clear()
                if self.average is not None:  # the old average of D means nothing now
                    self.average.copy_from(self.model.discriminator, self.average.model.discriminator)
                reinits += 1
                runlog.write({"event": "d_reinit", "epoch": epoch + 1, "step": step + 1, "d": values["d"]})
                self.log(
                    f"  discriminator loss {values['d']:.2e} < {cfg.train.d_reinit_threshold:g}: re-initialised D"
                )
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

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        runlog = RunLog(None)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            steps_per_epoch = len(self.splits.train) // max(
                min(cfg.data.batch_size, len(self.splits.train)), 1
            )
            runlog = RunLog(self.run_dir / "log.jsonl", open_event_mirror(self.run_dir, steps_per_epoch))
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
        for epoch in range(self.start_epoch, cfg.train.epochs):
            started = time.perf_counter()
            lr = self._set_lr(epoch)
            losses = self.train_epoch(epoch, runlog)
            val, test = self.score(calibrate=True)
            normalization = fit_normalization(val, cfg.eval)
            selection_name, value = selection_value(val, cfg.eval.selection_metric, epoch=epoch + 1)
            paper = None
            if cfg.eval.paper_each_epoch and self.splits.protocol != PAPER.name:
                paper = score_paper_protocol(
                    self.scoring_model, self.splits, cfg, self.device, self.amp_dtype
                )
            seconds = time.perf_counter() - started
            self.elapsed += seconds
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "losses": losses,
                "val": {
                    "auroc": auroc(val.labels, val.score),
                    "mean_normal_score": float(np.mean(val.score[val.labels == 0]))
                    if (val.labels == 0).any()
                    else math.nan,
                },
                "test": {"auroc": auroc(test.labels, test.score)},
                "selection": {"metric": selection_name, "value": value},
                "seconds": seconds,
            }
            if paper is not None:
                record["paper"] = paper
            if self.score_terms_used is not None:
                record["score_terms"] = self.score_terms_used
            improved = self.best is None or value > self.best.value
            if improved:
                self.best = Selection(epoch=epoch + 1, metric=selection_name, value=value)
                self.best_scores = (val, test)
            self.history.append(record)
            runlog.write({"event": "epoch"} | record | {"best": improved})
            checkpoint = self._checkpoint(epoch + 1, normalization)
            if self.is_main:
                if improved:
                    save_checkpoint(checkpoint_path(self.run_dir, "best"), checkpoint)
                save_checkpoint(checkpoint_path(self.run_dir, "last"), checkpoint)
            # The generator's terms are model-specific (g_con, g_lat, g_enc, ...): show those present.
            terms = " ".join(f"{k[2:]} {v:.4f}" for k, v in losses.items() if k.startswith("g_"))
            # The metric the epoch is chosen on; normal-only has no validation AUROC (no anomalies).
            val_text = selection_text(selection_name, value)
            if selection_name != "val.auroc" and not math.isnan(record["val"]["auroc"]):
                val_text += f"  val AUROC {record['val']['auroc']:.4f}"
            self.log(
                f"epoch {epoch + 1:>3}/{cfg.train.epochs}  g {losses['g']:.4f} ({terms})  d {losses['d']:.4f}  "
                f"{val_text}  test AUROC {record['test']['auroc']:.4f}"
                + (f"  paper-protocol AUROC {record['paper']['auroc']:.4f}" if "paper" in record else "")
                + (f"  score {'+'.join(record['score_terms'])}" if "score_terms" in record else "")
                + f"  {seconds:.1f}s"
                + ("  *best*" if improved else "")
            )
            for callback in self.callbacks:
                callback(self, epoch + 1)
        return self.finish(runlog)

    def score(self, calibrate: bool = False) -> tuple[ScoredSet, ScoredSet]:
        """Validation and test scores of the scoring weights (sharded over the processes).

        ``calibrate``: first fit what the improved score keeps besides weights, on this epoch's
        weights: the feature bank of the knn term (normal training images) and then the
        standardisation of the score terms (normal validation images); the scores returned are
        the model's scores with them."""
        model = self.scoring_model
        if self.context.enabled:
            distributed.average_buffers(model)  # one model on every rank, and in the checkpoint
        if self.device.type == "cpu":
            self.thread_chooser.apply()
        options = ScoringOptions.for_run(
            self.config, self.channels, self.device, self.amp_dtype, self.splits.protocol
        )
        if calibrate and self._bank_images is not None:
            model.set_feature_bank(
                feature_bank(model, self._bank_images, options.replace(batchnorm_train=False))
            )
        val, test = score_splits(model, self.splits, options, context=self.context)
        if calibrate and val.terms is not None:
            mean, std = fit_term_statistics(val)
            weights = choose_terms(val, mean, std) if model.select_terms else np.ones(len(mean))
            model.set_term_statistics(
                torch.from_numpy(mean).float(),
                torch.from_numpy(std).float(),
                torch.from_numpy(weights).float(),
            )
            for scored in {id(val): val, id(test): test}.values():
                scored.score = standardize_terms(scored, mean, std, weights)
            self.score_terms_used = [name for name, w in zip(val.terms, weights, strict=True) if w]
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

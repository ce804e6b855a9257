"""A trainer's state in and out of a :class:`~skipganomaly.formats.checkpoint.Checkpoint`: the
weights (and their average), the optimisers, every process's random streams, the history and the
selection, so that a resumed run ends with the weights of an uninterrupted one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..formats.checkpoint import Checkpoint
from ..runtime import distributed
from ..scoring.normalization import ScoreNormalization
from ..specs.errors import UserError
from .steps import rank_seed, rng_state, set_rng_state

if TYPE_CHECKING:
    from .trainer import Trainer


def trainer_checkpoint(trainer: Trainer, epoch: int, normalization: ScoreNormalization) -> Checkpoint:
    """The trainer's state after ``epoch``; in multi-process runs every rank must call it (the
    RNG states are gathered)."""
    context = trainer.context
    rng = rng_state(trainer.device)
    if context.enabled:
        rng = dict(rng, ranks=distributed.gather_objects(rng, context), world_size=context.world_size)
    average = trainer.average
    return Checkpoint(
        model_name=trainer.config.model.name,
        model_args=dict(trainer.model.args),
        config=trainer.config,
        state_dict={k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        ema_state_dict=None
        if average is None
        else {k: v.detach().cpu() for k, v in average.model.state_dict().items()},
        ema_updates=0 if average is None else average.updates,
        normalization=normalization,
        epoch=epoch,
        best=trainer.best,
        history=trainer.history,
        data=trainer.splits.info,
        optimizers={name: opt.state_dict() for name, opt in trainer.optimizers.items()},
        rng=rng,
        elapsed_s=trainer.elapsed,
    )


def restore_trainer(trainer: Trainer, checkpoint: Checkpoint) -> None:
    """Continue from a ``last`` checkpoint: weights, optimisers, RNG, history, selection."""
    trainer.model.load_state_dict(checkpoint.state_dict)
    if trainer.average is not None:
        if checkpoint.ema_state_dict is None:
            raise UserError("this run was trained without train.ema_decay; resume it with its own settings")
        trainer.average.model.load_state_dict(checkpoint.ema_state_dict)
        trainer.average.updates = checkpoint.ema_updates
    for name, opt in trainer.optimizers.items():
        opt.load_state_dict(checkpoint.optimizers[name])
    rng, context = checkpoint.rng, trainer.context
    if context.enabled:
        if rng.get("world_size") == context.world_size:
            set_rng_state(rng["ranks"][context.rank], trainer.device)
        else:  # another number of processes: fresh, still seeded, per-rank streams
            torch.manual_seed(rank_seed(trainer.config.train.seed, context.rank, checkpoint.epoch))
            trainer.log(
                f"resuming with {context.world_size} processes after a run with "
                f"{rng.get('world_size', 1)}: batches are the same, random streams are re-seeded"
            )
    else:
        set_rng_state(rng, trainer.device)
    trainer.history = list(checkpoint.history)
    trainer.best = checkpoint.best
    trainer.start_epoch = checkpoint.epoch
    trainer.elapsed = checkpoint.elapsed_s

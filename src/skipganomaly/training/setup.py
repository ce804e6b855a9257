"""What a training run starts from: the model built on its device and in its memory format, its
networks wrapped for several processes, and the precision it trains in (measured for ``auto``).

Each function leaves PyTorch's random stream as a run without it would find it, except where the
faithful order of a run draws from it (building the model, seeding each process)."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..data.base import Splits
from ..data.loading import iterate_batches, to_model_input
from ..models import build_model, model_args
from ..models.blocks import channels_last_where_library
from ..models.objective import LossWeights
from ..runtime import distributed
from ..runtime.device import adam
from ..runtime.distributed import DistributedContext
from ..runtime.precision import PrecisionChoice, choose_precision, cpu_identity, probe_precisions
from ..specs.config import Config
from ..specs.errors import UserError
from ..specs.score_terms import bank_within
from .steps import optimisation_step, rank_seed, rng_state, set_rng_state


def build_training_model(
    config: Config, splits: Splits, device: torch.device, context: DistributedContext
) -> nn.Module:
    """The configured model, on ``device`` and in the memory format training runs in. A feature
    bank of the score (:mod:`skipganomaly.specs.score_terms`) holds each training image at most
    once."""
    m, t = config.model, config.train
    args = bank_within(model_args(m, config.data.image_size, splits.channels), len(splits.train))
    model = build_model(m.name, **args)
    if t.sync_batchnorm and context.enabled:
        if device.type != "cuda":
            raise UserError(
                "train.sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                "drop it for CPU processes"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if t.channels_last and device.type == "cpu":
        channels_last_weights(model, config, splits.channels, device)
    elif t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def channels_last_weights(model: nn.Module, config: Config, channels: int, device: torch.device) -> None:
    """Channels-last weights only for the convolutions oneDNN runs (models.blocks.
    channels_last_where_library), found by one forward pass in eval mode (no BatchNorm
    update) on two images of the training shape; the random stream is left as it was."""
    size = config.data.image_size
    x = torch.zeros(2, channels, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    t = config.train
    weights = LossWeights(adversarial=t.w_adv, contextual=t.w_con, latent=t.w_lat)
    rng = rng_state(device)
    model.eval()
    try:
        channels_last_where_library(model, lambda: model.training_losses(x, weights))
    finally:
        model.train()
        set_rng_state(rng, device)


def wrap_for_processes(model: nn.Module, config: Config, context: DistributedContext) -> dict[str, nn.Module]:
    """Under torchrun, the model's networks wrapped for data parallelism (by the names of
    ``networks()``), and this process's own random stream seeded; in one process, nothing."""
    if not context.enabled:
        return {}
    if config.data.skip_bad_images:
        raise UserError(
            "--skip-bad-images would give the processes unequal batches under torchrun; remove the "
            "unreadable images or train in one process"
        )
    if not hasattr(model, "networks"):
        raise UserError(
            f"model {config.model.name!r} does not support multi-process training; run one process"
        )
    # Same initial weights everywhere (wrapping broadcasts rank 0's), own noise per rank.
    wrapped = {name: distributed.wrap(network, context) for name, network in model.networks().items()}
    torch.manual_seed(rank_seed(config.train.seed, context.rank))
    return wrapped


def training_precision(
    config: Config,
    model: nn.Module,
    splits: Splits,
    device: torch.device,
    weights: LossWeights,
    threads: int,
    context: DistributedContext,
) -> PrecisionChoice:
    """``train.precision``; for ``auto`` on a CPU with native bf16, the faster of fp32 and bf16
    as measured on this model and a training batch (or as measured before, cached). Under
    torchrun rank 0 decides for every rank."""
    fields = cpu_identity() | {
        "model": config.model.name,
        "args": dict(model.args),
        "batch": min(config.data.batch_size, len(splits.train)),
        "threads": threads,
        "channels_last": config.train.channels_last,
        "device": str(device),
    }

    def probe() -> dict[str, list[float]]:
        return probe_step_times(config, model, splits, device, weights)

    precision = config.train.precision
    choice = (
        choose_precision(precision, device, probe=probe, fields=fields)
        if context.is_main or precision != "auto"
        else None
    )
    if context.enabled and precision == "auto":
        choice = distributed.broadcast_object(choice, context)
    return choice


def probe_step_times(
    config: Config, model: nn.Module, splits: Splits, device: torch.device, weights: LossWeights
) -> dict[str, list[float]]:
    """Seconds per training step in fp32 and bf16 (runtime.precision.probe_precisions), on copies of the
    model and optimisers and the first training batch; the run's own weights, optimisers and
    random stream are left as they were."""
    t = config.train
    bs = min(config.data.batch_size, len(splits.train))
    batch = next(
        iterate_batches(
            splits.train, bs, image_size=config.data.image_size, channels=splits.channels,
            drop_last=True, workers=0, skip_bad=True, device=device,
        )
    )  # fmt: skip
    x = to_model_input(batch.images, device, t.channels_last)
    model = copy.deepcopy(model).train()
    optimizers = {
        name: adam(params, t.lr, (t.beta1, t.beta2), device)
        for name, params in model.parameter_groups().items()
    }
    rng = rng_state(device)

    def step(name: str) -> float:
        started = time.perf_counter()
        losses = optimisation_step(
            model, optimizers, x, weights, t.input_noise_std, device,
            torch.bfloat16 if name == "bf16" else None,
        )  # fmt: skip
        losses.discriminator.item()  # wait for the step (GPUs)
        return time.perf_counter() - started

    try:
        return probe_precisions(step)
    finally:
        set_rng_state(rng, device)

"""Data-parallel training on ``torch.distributed``: one process per device, launched by torchrun.

``torchrun --nproc_per_node N -m skipganomaly train ...`` starts N processes with RANK,
LOCAL_RANK and WORLD_SIZE set; :func:`context_from_env` joins them into one process group (NCCL on
GPUs, gloo on CPUs). Every process holds the whole model; each trains on its shard of every global
batch and ``DistributedDataParallel`` averages the gradients, so all replicas take the same
optimiser steps.

How the pieces fit the two-network step (see ``Trainer.train_step``):

* The generator and the discriminator are wrapped in *separate* DDP instances. One training step
  runs G once and D twice (on x and on x_hat) and back-propagates the generator loss into G's
  parameters only and the discriminator loss into D's only (``backward(inputs=...)``). Each DDP
  instance therefore sees exactly one backward pass per step in which every one of its parameters
  gets a gradient, which is what its reducer expects (no ``find_unused_parameters``, no
  ``no_sync``). One DDP over both networks would not work: its buckets would mix G and D
  parameters that become ready in different backward passes.
* Batches: ``data.batch_size`` stays the *global* batch. The epoch's seeded order is cut into
  global batches as in a single process, and rank r takes positions r, r+N, r+2N, ... of it
  (``DistributedSampler``'s interleaving), so the N shards of step k together are exactly the
  single-process batch k. With ``train.sync_batchnorm`` (GPUs only: PyTorch's SyncBatchNorm has
  no CPU kernel) BatchNorm normalises over the global batch and the gradients equal the
  single-process ones; without it each rank normalises its own shard ("ghost" batch norm), the
  usual DDP behaviour.
* BatchNorm running statistics are not broadcast every forward (``broadcast_buffers=False``);
  they are averaged over the ranks before every evaluation and checkpoint, so all ranks score with
  the same model and the checkpoint holds what was evaluated.
* Rank 0 alone writes logs, progress bars and checkpoints; evaluation is sharded over the ranks
  and gathered (scores in eval mode do not depend on batch composition, so this is exact).
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..specs.errors import UserError


@dataclass
class DistributedContext:
    """Where this process sits: rank among ``world_size`` processes, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context_from_env(device_name: str = "auto") -> DistributedContext:
    """Join the process group torchrun describes in the environment, or a one-process context."""
    if not launched_by_torchrun():
        return DistributedContext()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
        if torch.cuda.device_count() <= local_rank:
            raise UserError(
                f"process with LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_name == "cpu":
        device = torch.device("cpu")
        backend = "gloo"
    else:
        raise UserError(
            f"device {device_name!r} cannot be shared by torchrun processes; use auto, cpu or cuda"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_order(order: torch.Tensor, global_batch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of an epoch's order, cut so that its k-th batch of ``global_batch //
    world_size`` images is its share of the single-process k-th batch (incomplete last batch
    dropped, as in training)."""
    if global_batch % world_size:
        raise UserError(
            f"data.batch_size={global_batch} cannot be split evenly over {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    usable = (len(order) // global_batch) * global_batch
    return order[:usable][rank::world_size]


def wrap(module: nn.Module, context: DistributedContext) -> nn.Module:
    """``DistributedDataParallel`` around one network, buffers left to :func:`average_buffers`."""
    from torch.nn.parallel import DistributedDataParallel

    # oneDNN returns the weight gradient of a 1-channel input convolution with another (equivalent)
    # stride on the size-1 dimension than the parameter has; DDP warns and copies. Harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    kwargs: dict[str, Any] = {}
    if context.device is not None and context.device.type == "cuda":
        kwargs["device_ids"] = [context.device.index]
    # Newer PyTorch renames broadcast_buffers; both spellings still sync buffers once at wrap time.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(module, **kwargs)


def mean_over_ranks(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """``tensor`` averaged over the ranks, in place (a step's losses, for logs and the D-reset
    rule, so every rank takes the same decision); unchanged in a one-process run."""
    if context.enabled:
        dist.all_reduce(tensor)
        tensor /= context.world_size
    return tensor


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks; integer ones
    (batch counters) are equal on every rank already."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world


@torch.no_grad()
def broadcast_module(module: nn.Module, source: int = 0) -> None:
    """Copy parameters and buffers of ``module`` from rank ``source`` to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, source)


def broadcast_object(value: Any, context: DistributedContext, source: int = 0) -> Any:
    if not context.enabled:
        return value
    holder = [value if context.rank == source else None]
    dist.broadcast_object_list(holder, src=source, device=_object_device(context))
    return holder[0]


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not context.enabled:
        return [value]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, value)
    return out


def _object_device(context: DistributedContext) -> torch.device | None:
    return context.device if context.device is not None and context.device.type == "cuda" else None


def shard_indices(n: int, context: DistributedContext) -> np.ndarray:
    """Positions ``rank, rank + N, ...`` of ``range(n)``: this rank's share of an evaluation set."""
    return np.arange(context.rank, n, context.world_size, dtype=np.int64)

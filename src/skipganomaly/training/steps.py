"""One optimisation step, the learning-rate schedule, and the random streams a run keeps: what the
trainer repeats, as functions of the model and its optimisers."""

from __future__ import annotations

from typing import Any

import torch

from ..models.objective import LossWeights, TrainingLosses
from ..runtime.device import autocast


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


def rng_state(device: torch.device) -> dict[str, Any]:
    """PyTorch's random streams (CPU, and every GPU's when there are GPUs), to store or restore."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any], device: torch.device) -> None:
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
    corrupted: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainingLosses:
    """One optimisation step of both networks on batch ``x``: the losses (under autocast), each
    back-propagated into its own network's parameters only, then both optimisers step.
    ``corrupted``: the batch with synthetic anomalies and their masks, for a model that learns to
    restore (``train.corruptions``); other models never receive it."""
    extra = {} if corrupted is None else {"corrupted": corrupted}
    with autocast(device, amp_dtype):
        losses = model.training_losses(x, weights, input_noise_std, **(wrapped or {}), **extra)
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

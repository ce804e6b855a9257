"""Where tensors run and how a run starts: the device, its library settings, the optimiser
(fused Adam), compilation, autocast, seeding, and peak memory.

Precision is :mod:`.precision`, thread counts :mod:`.threads` (on the cores :mod:`.cores` finds),
several processes :mod:`.distributed`."""

from __future__ import annotations

import contextlib
import random
import resource
import sys
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..specs.errors import UserError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a valid torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    return device


# --------------------------------------------------------------------------- cores and threads


def configure_device(device: torch.device) -> None:
    """Per-device library settings: cuDNN picks its fastest kernels for the (fixed) input shapes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], device: torch.device):
    """Adam, fused into one kernel per step where PyTorch has that for ``device``.

    The same update rule as the default implementation; on a CPU the fused kernel is several times
    faster than the per-parameter loop PyTorch uses there by default (Adam's step is memory-bound
    and the loop passes over every parameter tensor about ten times).
    """
    params = list(params)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):  # older PyTorch: no fused kernel here
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas)


def compile_networks(networks: Iterable[nn.Module], mode: str) -> None:
    """``torch.compile`` each network in place (its state_dict keys stay unchanged)."""
    if mode == "off":
        return
    if mode not in COMPILE_MODES:
        raise UserError(f"train.compile={mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    for network in networks:
        network.compile(mode=None if mode == "default" else mode)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, the high-water mark of the process's own
    address space. ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used there: Linux carries it over
    ``exec``, so a child started by a large parent (``subprocess`` forks before it execs) reports at
    least the parent's size. Elsewhere ``ru_maxrss`` (KiB on Linux and BSD, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

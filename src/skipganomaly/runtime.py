"""Where and how tensors run: device choice, mixed precision, threads, optimisers, compilation,
seeding."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .errors import UserError

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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16).

    Elsewhere (AVX2, plain AVX-512) oneDNN emulates bf16 and autocast makes training many times
    slower, so ``precision: auto`` stays in fp32 there. Asks PyTorch's own CPU feature probes
    (which also check that the OS enabled AMX), then the kernel's CPU flags.
    """
    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    ]
    if all(callable(probe) for probe in probes):
        try:
            return any(bool(probe()) for probe in probes)
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32.

    ``auto`` picks bf16 on GPUs that support it and on CPUs with native bf16 matrix units
    (:func:`cpu_has_native_bf16`), fp32 elsewhere (emulated bf16 is many times slower).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int = 0, processes_per_machine: int = 1) -> int:
    """Set PyTorch's intra-op threads and return the number in use.

    ``threads`` > 0 is taken as given. 0 (auto) keeps PyTorch's default (one per core, or
    ``OMP_NUM_THREADS``) for a single process; under torchrun the cores are shared out among the
    processes of this machine (torchrun's own default is one thread per process, which idles
    most cores of a CPU machine).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    elif processes_per_machine > 1:
        torch.set_num_threads(max(1, available_cores() // processes_per_machine))
    return torch.get_num_threads()


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

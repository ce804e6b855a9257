"""Training precision: fp32 or bf16, as set, by rule, or for ``auto`` by measuring both on the
real model (a probe whose choice is cached per machine and configuration); and the autocast dtype
scoring uses (:func:`resolve_precision`, no measuring)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..specs.errors import UserError
from .cores import PROC, read_kernel_file
from .files import cache_root, write_json


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
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32, without
    measuring (scoring and prediction use this; training measures, :func:`choose_precision`).

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


# --------------------------------------------------------------------------- precision by measurement
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


# bf16 must beat fp32 by this fraction of a step to be kept: a tie keeps the exact arithmetic.
BF16_MARGIN = 0.05


# The probe stops after its first timed round when bf16 is this many times slower: no later
# round would turn such a loss around, and each emulated bf16 step is expensive.
CLEAR_LOSS = 1.5


PROBE_ROUNDS = 3


PROBE_FORMAT = 1  # bump when what the probe measures changes, so cached choices are measured again


@dataclass
class PrecisionChoice:
    """The training precision and why: ``source`` is ``set`` (fp32/bf16 asked for), ``rule``
    (auto decided without measuring), ``probe`` (measured now) or ``cache`` (measured before on
    this machine and configuration); ``step_s`` the probe's median seconds per step."""

    name: str
    reason: str
    source: str
    step_s: dict[str, float] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISION_DTYPES[self.name]

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


def decide_precision(step_times: dict[str, list[float]], margin: float = BF16_MARGIN) -> str:
    """``bf16`` when the median of its step times beats fp32's by more than ``margin``, else ``fp32``."""
    fp32, bf16 = step_times.get("fp32"), step_times.get("bf16")
    if not fp32 or not bf16:
        return "fp32"
    return "bf16" if statistics.median(bf16) < (1 - margin) * statistics.median(fp32) else "fp32"


def probe_is_decided(step_times: dict[str, list[float]]) -> bool:
    """True once bf16 clearly loses (``CLEAR_LOSS``): the probe need not run more rounds."""
    fp32, bf16 = step_times.get("fp32"), step_times.get("bf16")
    return bool(fp32 and bf16) and statistics.median(bf16) > CLEAR_LOSS * statistics.median(fp32)


def probe_precisions(
    run_step: Callable[[str], float], rounds: int = PROBE_ROUNDS, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per training step in each precision: ``warmup`` untimed steps each (kernel
    selection, caches), then up to ``rounds`` interleaved rounds (fp32, bf16), so a change in
    the machine's load affects both alike; stops early once bf16 clearly loses."""
    for _ in range(warmup):
        for name in PRECISION_DTYPES:
            run_step(name)
    times: dict[str, list[float]] = {name: [] for name in PRECISION_DTYPES}
    for _ in range(rounds):
        for name in PRECISION_DTYPES:
            times[name].append(run_step(name))
        if probe_is_decided(times):
            break
    return times


def cpu_identity() -> dict[str, str]:
    """What a measured choice depends on in the machine: CPU model and flags, PyTorch."""
    model, flags = platform.processor() or platform.machine(), ""
    text = read_kernel_file(PROC / "cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name") and model in ("", platform.machine()):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = hashlib.sha1(" ".join(sorted(line.split(":", 1)[1].split())).encode()).hexdigest()[:12]
    return {
        "cpu": model,
        "cpu_flags": flags,
        "torch": torch.__version__,
        "isa": str(torch.backends.cpu.get_cpu_capability()),
    }


def precision_cache_file() -> Path:
    return cache_root() / "runtime" / "precision.json"


def _cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_precision(fields: dict[str, Any], path: Path | None = None) -> dict[str, Any] | None:
    path = path or precision_cache_file()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = entries.get(_cache_key(fields)) if isinstance(entries, dict) else None
    return entry if isinstance(entry, dict) and entry.get("choice") in PRECISION_DTYPES else None


def store_precision(fields: dict[str, Any], entry: dict[str, Any], path: Path | None = None) -> None:
    """Add one measured choice to the cache file (rewritten atomically; a cache that cannot be
    written only means the next run measures again)."""
    path = path or precision_cache_file()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[_cache_key(fields)] = entry | {"fields": fields}
    with contextlib.suppress(OSError):
        write_json(path, entries)


def choose_precision(
    precision: str,
    device: torch.device,
    *,
    probe: Callable[[], dict[str, list[float]]] | None = None,
    fields: dict[str, Any] | None = None,
    cache: Path | None = None,
    native_bf16: Callable[[], bool] | None = None,
) -> PrecisionChoice:
    """The training precision for ``precision`` (fp32, bf16 or auto) on ``device``.

    ``auto``: bf16 on GPUs that support it; fp32 on CPUs without native bf16 (AMX or
    AVX512-BF16), where bf16 is emulated and measured 5-25x slower per step, so probing it
    would cost minutes to learn that; elsewhere the faster of the two as measured by ``probe``
    (:func:`probe_precisions` on the real model and batch), remembered in the cache file under
    ``fields`` (machine, PyTorch, model, batch, threads) so the next run does not measure again.
    """
    if precision in PRECISION_DTYPES:
        return PrecisionChoice(precision, "as set", "set")
    if precision != "auto":
        raise UserError(f"train.precision={precision!r}: choose fp32, bf16 or auto")
    if device.type == "cuda":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return PrecisionChoice(
            name, f"auto: {'bf16 supported' if name == 'bf16' else 'no bf16'} on this GPU", "rule"
        )
    native = (native_bf16 or cpu_has_native_bf16)()
    if device.type != "cpu" or not native or probe is None:
        why = "no native bf16 on this CPU (AMX or AVX512-BF16): bf16 would be emulated, several times slower"
        if device.type != "cpu":
            why = f"bf16 autocast is not tried on {device.type}"
        elif native:
            why = "native bf16, but nothing to measure with"
        return PrecisionChoice("fp32", f"auto: {why}", "rule")
    fields = dict(fields or {}) | {"probe_format": PROBE_FORMAT}
    entry = cached_precision(fields, cache)
    if entry is not None:
        step_s = {k: float(v) for k, v in entry.get("step_s", {}).items()}
        return PrecisionChoice(entry["choice"], f"auto: {_versus(step_s)}, measured earlier", "cache", step_s)
    times = probe()
    choice = decide_precision(times)
    step_s = {name: statistics.median(values) for name, values in times.items() if values}
    store_precision(
        fields, {"choice": choice, "step_s": step_s, "rounds": times, "measured": time.time()}, cache
    )
    return PrecisionChoice(choice, f"auto: {_versus(step_s)}, measured now", "probe", step_s)


def _versus(step_s: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1000:.0f} ms/step" for name, seconds in step_s.items())

"""Where and how tensors run: device choice, mixed precision, threads, optimisers, compilation,
seeding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
PROC = Path("/proc")  # where the kernel tells about CPUs and load (tests point these at fixtures)
CGROUP = Path("/sys/fs/cgroup")


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
    text = _read(PROC / "cpuinfo") or ""
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
    from .data.cache import cache_root  # the package's one cache directory

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
    from .files import write_json

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


# --------------------------------------------------------------------------- cores and threads


def affinity_cores() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _cgroup_v2_limit(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "<quota> <period>" in microseconds
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        return int(quota) / int(period or 100000)
    except ValueError:
        return None


def _cgroup_v1_limit(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        return int(quota) / int(period) if quota and period and int(quota) > 0 else None
    except ValueError:
        return None


def _limits_up_the_tree(mount: Path, relative: str, read_limit) -> list[float]:
    """The limits of ``mount/relative`` and of each folder above it up to ``mount``: a cgroup
    can use no more than the tightest of its ancestors allow."""
    limits = []
    folder = mount / relative if relative else mount
    if not folder.is_dir():  # our cgroup's path is not visible (a cgroup namespace): the mount's own
        folder = mount
    while True:
        limit = read_limit(folder)
        if limit is not None:
            limits.append(limit)
        if folder == mount or mount not in folder.parents:
            return limits
        folder = folder.parent


def cgroup_cpu_limit(proc: Path = PROC, cgroup: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (quota / period), or None without one.

    Reads ``/proc/self/cgroup`` for where the process sits, then cgroup v2's ``cpu.max`` or v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` there and in every folder above it. A container
    limited to 1.5 CPUs sees all the host's cores in its affinity mask; only this tells.
    """
    text = _read(proc / "self" / "cgroup")
    if not text:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":  # the unified (v2) hierarchy
            limits += _limits_up_the_tree(cgroup, relative, _cgroup_v2_limit)
            unified = cgroup / "unified"  # hybrid layouts mount v2 here
            if unified.is_dir():
                limits += _limits_up_the_tree(unified, relative, _cgroup_v2_limit)
        elif "cpu" in controllers.split(","):
            for mount in (cgroup / controllers, cgroup / "cpu", cgroup / "cpu,cpuacct"):
                if mount.is_dir():
                    limits += _limits_up_the_tree(mount, relative, _cgroup_v1_limit)
                    break
    return min(limits) if limits else None


def available_cores(proc: Path = PROC, cgroup: Path = CGROUP) -> int:
    """The cores this process can use: its affinity mask, capped by its cgroup's CPU quota
    (rounded up: a quota of 1.5 CPUs runs 2 threads, throttled together, faster than 1)."""
    cores = affinity_cores()
    limit = cgroup_cpu_limit(proc, cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit - 1e-9))
    return max(1, cores)


@dataclass(frozen=True)
class CpuSample:
    """A reading of how busy this process's CPUs were: ``busy`` is their non-idle time (seconds,
    summed over the CPUs, from ``/proc/stat``), ``own`` this process's CPU time, ``wall`` when."""

    wall: float
    busy: float
    own: float


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def sample_cpu(proc: Path = PROC, cpus: set[int] | None = None) -> CpuSample | None:
    """Read ``/proc/stat``'s per-CPU times (of ``cpus``, default this process's affinity) and this
    process's CPU time. None where ``/proc/stat`` cannot be read (not Linux)."""
    text = _read(proc / "stat")
    if not text:
        return None
    cpus = _allowed_cpus() if cpus is None else cpus
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    seen = False
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait are taken
        # (steal is time the hypervisor gave to another machine: not ours either).
        values = [int(v) for v in fields[:8]]
        busy += sum(values) - values[3] - values[4]
        seen = True
    if not seen:
        return None
    return CpuSample(wall=time.monotonic(), busy=busy / ticks, own=time.process_time())


def cores_busy_with_other_work(before: CpuSample, after: CpuSample) -> float:
    """How many of this process's cores other processes kept busy between two samples: the CPUs'
    non-idle time minus this process's own CPU time, per second of wall time."""
    seconds = after.wall - before.wall
    if seconds <= 0:
        return 0.0
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / seconds)


def openmp_wait_policy() -> tuple[str, str]:
    """How PyTorch's OpenMP threads wait at a barrier, and a note when that is not the passive
    waiting this package asks for (``skipganomaly/__init__.py``): libgomp reads
    ``OMP_WAIT_POLICY`` once, when PyTorch loads, and a spinning thread holds a core that a
    thread of the same step, or another process, needs (measured 3-10x slower on a busy
    machine, docs/speed.md)."""
    import skipganomaly

    if skipganomaly.OMP_WAIT_POLICY_GIVEN:
        policy = skipganomaly.OMP_WAIT_POLICY_GIVEN.upper()
        return (
            policy,
            ""
            if policy == "PASSIVE"
            else f"OMP_WAIT_POLICY={policy} was set: OpenMP threads spin while they wait",
        )
    if skipganomaly.TORCH_LOADED_FIRST:
        return "default", (
            "PyTorch was imported before skipganomaly, so OpenMP threads spin while they wait; on a shared "
            "machine import skipganomaly first or set OMP_WAIT_POLICY=PASSIVE"
        )
    return "PASSIVE", ""


# A core is free when other work leaves at least FREE_SHARE of it idle.
FREE_SHARE = 0.75


def threads_for_load(available: int, others: float) -> int:
    """The cores of ``available`` that other work (``others`` cores' worth) leaves free: those at
    least ``FREE_SHARE`` idle, at least 1."""
    return max(1, min(available, math.floor(available - others + 1 - FREE_SHARE + 1e-9)))


def thread_candidates(available: int, others: float) -> list[int]:
    """The thread counts worth running: all cores on a quiet machine; on a busy one both the
    free cores (:func:`threads_for_load`) and all cores, to be compared by step time.

    Every parallel region ends at a barrier that waits for its slowest thread, and a thread that
    shares its core with a busy process waits for the scheduler at each barrier. Whether that
    costs more than the core it adds depends on how many regions a second brings (a small model,
    bf16 casts: thousands) and on the scheduler, so it is measured rather than guessed
    (docs/speed.md)."""
    free = threads_for_load(available, others)
    return [available] if free == available else [free, available]


# Step times within this fraction of the fastest count are a tie, won by the fewer threads (fewer
# barriers, and cores left to the other work).
THREAD_TIE = 0.03


def fastest_thread_count(step_times: dict[int, list[float]]) -> int:
    """The count whose median step time is lowest; near-ties go to the fewer threads."""
    medians = {count: statistics.median(times) for count, times in step_times.items() if times}
    best = min(medians.values())
    return min(count for count, median in medians.items() if median <= best * (1 + THREAD_TIE))


REUSE_S = 30.0
_last_reading: CpuSample | None = None


def _default_sampler() -> CpuSample | None:
    return sample_cpu(PROC)


class ThreadChooser:
    """Chooses PyTorch's intra-op thread count, and re-chooses it while training runs.

    * ``requested`` > 0: that many, always.
    * several processes on this machine (torchrun): the available cores shared out among them.
    * otherwise: the available cores (:func:`available_cores`: affinity mask and cgroup quota).
      When other processes keep some of them busy (``/proc/stat`` less this process's own CPU
      time, read over ``probe_s`` at the start and then every ``interval_s``), the free cores
      and all cores are each run for ``trial_steps`` training steps, interleaved, and the faster
      by median step time is kept (:func:`thread_candidates`, :func:`fastest_thread_count`);
      on the same load the comparison is repeated every ``retrial_s``. The trainer reports each
      step's time (``step_done``); between steps this costs one read of ``/proc/stat`` every
      ``interval_s``.
    """

    def __init__(
        self,
        requested: int = 0,
        processes_per_machine: int = 1,
        *,
        interval_s: float = 10.0,
        retrial_s: float = 120.0,
        trial_steps: int = 3,
        probe_s: float = 0.25,
        proc: Path = PROC,
        cgroup: Path = CGROUP,
        sampler: Callable[[], CpuSample | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.requested = requested
        self.available = available_cores(proc, cgroup)
        self.interval_s, self.retrial_s, self.trial_steps, self.probe_s = (
            interval_s,
            retrial_s,
            trial_steps,
            probe_s,
        )
        self.sampler = sampler or (_default_sampler if proc == PROC else (lambda: sample_cpu(proc)))
        self.sleep = sleep
        self.clock = clock
        self.adaptive = requested <= 0 and processes_per_machine <= 1
        if requested > 0:
            self.threads = requested
        elif processes_per_machine > 1:
            self.threads = max(1, self.available // processes_per_machine)
        else:
            self.threads = self.available
        self.others: float | None = None
        self.decisions: list[dict[str, Any]] = []  # each comparison's outcome and each change
        self.trial: dict[int, list[float]] | None = None  # step times per count while comparing
        self._trial_key: tuple[int, ...] | None = None  # the candidates the last comparison settled
        self._trial_ended = -math.inf
        self._seen: set[int] = set()  # counts a step has run at (the first one warms up)
        self._last: CpuSample | None = None

    # ---------------------------------------------------------------- readings
    def start(self) -> int:
        """Read the machine (adaptive mode), set the thread count, return it.

        The reading spans ``probe_s`` of sleep, or, when this process took a reading between
        ``probe_s`` and ``REUSE_S`` seconds ago (a previous run, a benchmark's other mode), the
        time since then, which costs no sleep."""
        global _last_reading
        if self.adaptive:
            before = _last_reading if self.sampler is _default_sampler else None
            if before is None or not self.probe_s <= self.clock() - before.wall <= REUSE_S:
                before = self.sampler()
                if before is not None:
                    self.sleep(self.probe_s)
            if before is not None:
                self._last = self.sampler()
                if self._last is not None:
                    self.others = cores_busy_with_other_work(before, self._last)
                    if self.sampler is _default_sampler:
                        _last_reading = self._last
                    self._plan(thread_candidates(self.available, self.others))
        return self.apply()

    def _plan(self, candidates: list[int]) -> bool:
        """Run ``candidates``' one count, or compare them (unless this comparison was settled
        less than ``retrial_s`` ago); True if the count changed."""
        before = self.threads
        if len(candidates) == 1:
            self.trial = None
            self.threads = candidates[0]
        elif self.trial is None and (
            tuple(candidates) != self._trial_key or self.clock() - self._trial_ended >= self.retrial_s
        ):
            self.trial = {count: [] for count in candidates}
            self.threads = candidates[0]
        return self.threads != before

    def apply(self) -> int:
        """Set the chosen count (again: another part of the process may have changed it)."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.threads

    def step_done(self, seconds: float) -> bool:
        """Record one training step of ``seconds`` at the current count; compare or re-read the
        machine as due. True if the thread count changed (``decisions`` says why, when it was
        a decision rather than a step of a comparison)."""
        if not self.adaptive:
            return False
        before = self.threads
        warm = self.threads in self._seen
        self._seen.add(self.threads)
        if self.trial is not None:
            if warm:
                self.trial[self.threads].append(seconds)
            if all(len(times) >= self.trial_steps for times in self.trial.values()):
                self.threads = fastest_thread_count(self.trial)
                self._note(before, step_s={c: round(statistics.median(t), 4) for c, t in self.trial.items()})
                self._trial_key, self._trial_ended, self.trial = tuple(self.trial), self.clock(), None
            else:  # the next count that still needs steps
                counts = list(self.trial)
                ordered = counts[counts.index(self.threads) + 1 :] + counts[: counts.index(self.threads) + 1]
                self.threads = next(c for c in ordered if len(self.trial[c]) < self.trial_steps)
        elif self._last is not None and self.clock() - self._last.wall >= self.interval_s:
            sample = self.sampler()
            if sample is not None:
                self.others = cores_busy_with_other_work(self._last, sample)
                self._last = sample
                if self._plan(thread_candidates(self.available, self.others)) and self.trial is None:
                    self._note(before)
        if self.threads != before:
            self.apply()
        return self.threads != before

    def _note(self, before: int, **details: Any) -> None:
        others = round(self.others, 2) if self.others is not None else None
        self.decisions.append({"from": before, "to": self.threads, "others": others} | details)

    def describe(self) -> str:
        """One line: the count and why."""
        plural = "" if self.threads == 1 else "s"
        if self.requested > 0:
            return f"{self.threads} thread{plural} (as set)"
        if not self.adaptive:
            return f"{self.threads} thread{plural} ({self.available} cores shared among the processes)"
        busy = f", {self.others:.1f} busy with other work" if self.others is not None else ""
        _, note = openmp_wait_policy()
        note = f"; {note}" if note else ""
        if self.trial is not None:
            counts = " and ".join(str(c) for c in self.trial)
            return (
                f"{counts} threads compared over the first steps ({self.available} cores available{busy}; "
                f"the load re-read every {self.interval_s:g} s){note}"
            )
        return (
            f"{self.threads} thread{plural} ({self.available} cores available{busy}; "
            f"re-read every {self.interval_s:g} s){note}"
        )


def configure_threads(threads: int = 0, processes_per_machine: int = 1) -> int:
    """Set PyTorch's intra-op threads once (no re-checking) and return the number in use; see
    :class:`ThreadChooser`."""
    return ThreadChooser(threads, processes_per_machine).start()


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

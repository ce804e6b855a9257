"""PyTorch's intra-op thread count: :class:`ThreadChooser` sets it from the machine (the available
cores of :mod:`.cores`, ``OMP_NUM_THREADS``), never from the current load, so that one seed gives
one result on one machine; with ``train.threads=auto`` (an opt-in, not reproducible) it instead
compares the free cores with all cores by step time on a machine shared with other work; and how
OpenMP threads wait (``OMP_WAIT_POLICY``)."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cores import (
    CGROUP,
    PROC,
    CpuSample,
    available_cores,
    cores_busy_with_other_work,
    sample_cpu,
)


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


# train.threads: 0 fixes the count from the machine (the default), N fixes it to N, and this
# follows the load (faster on a shared machine, but the count, and so the result, varies).
FOLLOW_LOAD = "auto"


def omp_thread_limit(environ: dict[str, str] | None = None) -> int | None:
    """``OMP_NUM_THREADS`` as a positive whole number (its first value, as OpenMP reads a list),
    or None when unset or not one."""
    text = (environ if environ is not None else os.environ).get("OMP_NUM_THREADS", "")
    first = text.split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def machine_thread_count(
    available: int, processes_per_machine: int = 1, environ: dict[str, str] | None = None
) -> int:
    """The default count, from the machine alone: the available cores (affinity mask, cgroup
    quota), capped by ``OMP_NUM_THREADS``, shared out among the processes on this machine. It
    does not depend on what else the machine is doing, so two runs with one seed agree."""
    count = available
    limit = omp_thread_limit(environ)
    if limit is not None:
        count = min(count, limit)
    return max(1, count // max(1, processes_per_machine))


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
        requested: int | str = 0,
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
        if requested != FOLLOW_LOAD and (not isinstance(requested, int) or requested < 0):
            raise ValueError(f"threads={requested!r}: 0, a positive number or {FOLLOW_LOAD!r}")
        self.follow_load = requested == FOLLOW_LOAD
        self.requested = 0 if self.follow_load else int(requested)
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
        self.processes_per_machine = processes_per_machine
        self.adaptive = self.follow_load and processes_per_machine <= 1
        if self.requested > 0:
            self.threads = self.requested
        elif self.adaptive:
            self.threads = self.available
        else:
            self.threads = machine_thread_count(self.available, processes_per_machine)
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
        if self.processes_per_machine > 1:
            return f"{self.threads} thread{plural} ({self.available} cores shared among the processes)"
        if not self.adaptive:
            omp = omp_thread_limit()
            capped = f", OMP_NUM_THREADS={omp}" if omp is not None and omp < self.available else ""
            return (
                f"{self.threads} thread{plural} (fixed from the machine: {self.available} cores available{capped}; "
                f"train.threads={FOLLOW_LOAD} follows the load instead, not reproducibly)"
            )
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


def configure_threads(threads: int | str = 0, processes_per_machine: int = 1) -> int:
    """Set PyTorch's intra-op threads once (no re-checking) and return the number in use; see
    :class:`ThreadChooser`."""
    return ThreadChooser(threads, processes_per_machine).start()

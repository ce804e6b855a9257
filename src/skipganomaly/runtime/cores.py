"""The CPU cores this process may use and how busy other work keeps them: the affinity mask, the
cgroup's CPU quota (v1 and v2), and ``/proc/stat`` readings. No PyTorch: numbers for
:mod:`.threads` to choose from."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")  # where the kernel tells about CPUs and load (tests point these at fixtures)


CGROUP = Path("/sys/fs/cgroup")


def affinity_cores() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def read_kernel_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _cgroup_v2_limit(folder: Path) -> float | None:
    text = read_kernel_file(folder / "cpu.max")  # "max 100000" or "<quota> <period>" in microseconds
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
    quota, period = (
        read_kernel_file(folder / "cpu.cfs_quota_us"),
        read_kernel_file(folder / "cpu.cfs_period_us"),
    )
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
    text = read_kernel_file(proc / "self" / "cgroup")
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
    text = read_kernel_file(proc / "stat")
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

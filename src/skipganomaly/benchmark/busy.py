"""A busy machine: processes that keep cores busy beside the measurement (``BusyProcesses``),
each spinning one core or training a copy of the model on one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import torch

from .modes import PlainMode

# --------------------------------------------------------------------------- a busy machine
BUSY_KINDS = ("spin", "train")

_BUSY_CHILD = """
import ctypes, os, sys, time
kind, deadline, parent = sys.argv[1], time.monotonic() + float(sys.argv[2]), os.getppid()
try:  # die with the benchmark even if it is killed (Linux)
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
def alive():
    return time.monotonic() < deadline and os.getppid() == parent
if kind == "train":
    import torch
    from skipganomaly.benchmark.busy import busy_training_step
    torch.set_num_threads(1)
    step = busy_training_step()
    step()
    print("ready", flush=True)
    while alive():
        step()
else:
    print("ready", flush=True)
    while alive():
        for _ in range(100000):
            pass
"""


def busy_training_step() -> Callable[[], None]:
    """One plain training step of the full-size model at 32 px on a batch of 64 (the load of a
    1-thread training run beside the benchmark)."""
    from ..models import SkipGANomaly

    torch.manual_seed(0)
    model = SkipGANomaly(32, 3)
    plain = PlainMode(model, torch.device("cpu"), 64)
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    return lambda: plain.train_step(x)


class BusyProcesses:
    """``count`` processes that keep cores busy while the benchmark measures: started on entry
    (returns once each is running), stopped on exit whatever happened; each also ends on its own
    after ``max_seconds`` or when this process is gone."""

    def __init__(self, count: int, kind: str = "spin", max_seconds: float = 3600.0):
        if kind not in BUSY_KINDS:
            raise ValueError(f"busy kind {kind!r}: choose {' or '.join(BUSY_KINDS)}")
        self.count, self.kind, self.max_seconds = count, kind, max_seconds
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> BusyProcesses:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            for _ in range(self.count):
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _BUSY_CHILD, self.kind, str(self.max_seconds)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                        env=env,
                    )
                )
            for process in self.processes:
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a busy process ({self.kind}) did not start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes = []

    def __exit__(self, *exc) -> None:
        self.stop()

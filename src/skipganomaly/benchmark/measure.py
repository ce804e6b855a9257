"""The measurement: timed rounds of both modes per image size, interleaved (``measure_size``),
each mode's peak memory in a fresh child process (``_child_peak``), and the whole run
(``run_benchmark``: the header, the sizes, the table)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ..runtime.device import peak_rss_mib, resolve_device
from ..runtime.precision import choose_precision
from ..runtime.threads import ThreadChooser
from .busy import BusyProcesses
from .modes import BenchmarkSettings, OptimisedMode, PlainMode, synthetic_splits
from .table import format_header, format_table, machine_description


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - started


def _build(settings: BenchmarkSettings, size: int, run_dir: str, modes=("plain", "optimised")):
    """The data and the modes asked for; both start from the same initial weights (seeded)."""
    steps_images = settings.steps * settings.batch_size
    splits = synthetic_splits(steps_images, settings.score_images, size, settings.channels)
    optimised = OptimisedMode(settings, size, splits, run_dir)
    plain = None
    if "plain" in modes:
        trainer = optimised.trainer
        # A copy of the optimised model's initial weights, in the default memory format.
        plain = PlainMode(trainer.model, trainer.device, settings.batch_size)
        plain.model = plain.model.to(memory_format=torch.contiguous_format)
    if "optimised" not in modes:
        device = optimised.trainer.device
        del optimised
        return splits, plain, None, device
    return splits, plain, optimised, optimised.trainer.device


def measure_size(
    settings: BenchmarkSettings, size: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Throughput of both modes at one image size, interleaved rounds, medians."""
    with tempfile.TemporaryDirectory() as run_dir:
        splits, plain, optimised, device = _build(settings, size, run_dir, settings.modes)
        if optimised is not None:
            log(f"  {size} px optimised: {optimised.trainer.precision.describe()}")
        train_images = splits.train.images
        plain_threads = plain_thread_count(settings)

        def as_plain(run: Callable[[], Any]) -> Callable[[], Any]:
            def run_plain() -> Any:
                torch.set_num_threads(plain_threads)
                return run()

            return run_plain

        tasks = {}
        if plain is not None:
            tasks[("train", "plain")] = as_plain(lambda: plain.train_epoch(train_images))
        if optimised is not None:
            tasks[("train", "optimised")] = optimised.train_epoch
            # What the restoring preset adds to each step: corrupting the batch (train.corruptions).
            tasks[("corrupt", "optimised")] = optimised.corrupt_batches
        if plain is not None:
            tasks[("score", "plain")] = as_plain(lambda: plain.score(splits.test.images))
        if optimised is not None:
            tasks[("score", "optimised")] = optimised.score
        optimised_threads: list[int] = []
        counts = {
            "train": len(train_images) // settings.batch_size * settings.batch_size,
            "corrupt": len(train_images) // settings.batch_size * settings.batch_size,
            "score": len(splits.test),
        }
        times: dict[tuple[str, str], list[float]] = {key: [] for key in tasks if key[1] in settings.modes}
        if optimised is not None and settings.warmup > 0:
            # On a busy machine training first compares thread counts over a few steps (minutes
            # of a real run's hours); the timed rounds measure what it then runs at.
            for _ in range(MAX_SETTLING_ROUNDS):
                if optimised.trainer.thread_chooser.trial is None:
                    break
                optimised.train_epoch()
        for round_index in range(settings.warmup + settings.repeats):
            for key in times:
                seconds = _timed(tasks[key], device)
                if round_index >= settings.warmup:
                    times[key].append(seconds)
                if key == ("train", "optimised") and round_index >= settings.warmup:
                    optimised_threads.append(torch.get_num_threads())
            log(
                f"  {size} px round {round_index + 1}/{settings.warmup + settings.repeats}"
                + (" (warm-up)" if round_index < settings.warmup else "")
                + ": "
                + ", ".join(
                    f"{task} {mode} {counts[task] / times[(task, mode)][-1]:.1f} img/s"
                    for task, mode in times
                    if times[(task, mode)] and round_index >= settings.warmup
                )
            )
        result: dict[str, Any] = {"size": size, "plain_threads": plain_threads}
        if optimised is not None:
            result["optimised_threads"] = optimised_threads  # per timed round, after its epoch
            result["optimised_precision"] = optimised.trainer.precision.name
            result["optimised_thread_decisions"] = optimised.trainer.thread_chooser.decisions
        for (task, mode), values in times.items():
            result[f"{task}_{mode}_img_s"] = counts[task] / statistics.median(values)
            result[f"{task}_{mode}_rounds_img_s"] = [counts[task] / v for v in values]
        for task in ("train", "score"):
            if (task, "plain") in times and (task, "optimised") in times:
                # Paired: each round's plain and optimised runs saw the same machine load.
                paired = [
                    p / o for p, o in zip(times[(task, "plain")], times[(task, "optimised")], strict=True)
                ]
                result[f"{task}_ratio"] = statistics.median(paired)
        if ("corrupt", "optimised") in times:
            # The synthetic anomalies' cost as a share of the optimised step, paired per round.
            paired = [
                c / t
                for c, t in zip(times[("corrupt", "optimised")], times[("train", "optimised")], strict=True)
            ]
            result["corruption_share"] = statistics.median(paired)
        return result


def _child_peak(settings: BenchmarkSettings, size: int, task: str, mode: str) -> float | None:
    """Peak memory (MiB) of one task in one mode, measured in a fresh process."""
    payload = json.dumps({"settings": asdict(settings), "size": size, "task": task, "mode": mode})
    code = "import sys, skipganomaly.benchmark.measure as b; b._child_main(sys.argv[1])"
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-c", code, payload], capture_output=True, text=True, env=env, timeout=3600
    )
    if result.returncode != 0:
        return None
    return float(result.stdout.strip().splitlines()[-1])


def _child_main(payload: str) -> None:
    spec = json.loads(payload)
    values = spec["settings"]
    values["modes"] = tuple(values["modes"])
    settings = BenchmarkSettings(**values)
    with tempfile.TemporaryDirectory() as run_dir:
        splits, plain, optimised, device = _build(settings, spec["size"], run_dir, (spec["mode"],))
        if spec["mode"] == "plain":
            run = (
                (lambda: plain.train_epoch(splits.train.images))
                if spec["task"] == "train"
                else (lambda: plain.score(splits.test.images))
            )
        else:
            run = optimised.train_epoch if spec["task"] == "train" else optimised.score
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run()
        run()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    print(f"{peak:.1f}")


MAX_SETTLING_ROUNDS = 20
_DEFAULT_THREADS = torch.get_num_threads()  # PyTorch's own choice, before anything changes it


def plain_thread_count(settings: BenchmarkSettings) -> int:
    """The plain mode's threads: ``--threads`` if given, else PyTorch's default (one per core)."""
    fixed = isinstance(settings.threads, int) and settings.threads > 0
    return settings.threads if fixed else _DEFAULT_THREADS


def run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    with BusyProcesses(settings.busy, settings.busy_kind):
        return _run_benchmark(settings, log)


def _run_benchmark(settings: BenchmarkSettings, log: Callable[[str], None]) -> dict[str, Any]:
    device = resolve_device(settings.device)
    chooser = ThreadChooser(settings.threads)
    optimised_threads = chooser.start() if device.type == "cpu" else torch.get_num_threads()
    amp = choose_precision(settings.precision, device, probe=None).dtype
    header = machine_description() | {
        "device": str(device),
        "threads": {"plain": plain_thread_count(settings), "optimised": optimised_threads},
        "threads_reason": chooser.describe(),
        "busy": {"processes": settings.busy, "kind": settings.busy_kind},
        "optimised_dtype": str(amp).replace("torch.", "") if amp is not None else "float32",
        "plain_dtype": "float32",
        "channels_last": settings.channels_last,
        "batch_size": settings.batch_size,
        "score_batch_size": {"plain": 64, "optimised": settings.score_batch_size},
        "networks": {
            "ngf": settings.ngf,
            "ndf": settings.ndf,
            "nz": settings.nz,
            "channels": settings.channels,
        },
        "protocol": f"median of {settings.repeats} rounds after {settings.warmup} warm-up, modes interleaved, "
        "ratio = median of the per-round ratios; "
        f"a training round is {settings.steps} step{'' if settings.steps == 1 else 's'} of {settings.batch_size} images, a scoring round "
        f"{settings.score_images} images",
    }
    log(format_header(header))
    results = []
    for size in settings.sizes:
        result = measure_size(settings, size, log)
        if settings.memory:
            for task in ("train", "score"):
                for mode in settings.modes:
                    result[f"{task}_{mode}_peak_mib"] = _child_peak(settings, size, task, mode)
        results.append(result)
    chosen = {r["optimised_precision"] for r in results if "optimised_precision" in r}
    if chosen:  # what the optimised mode's trainer chose (auto measures on CPUs with native bf16)
        header["optimised_dtype"] = (
            "bfloat16" if chosen == {"bf16"} else "float32" if chosen == {"fp32"} else "per size"
        )
    counts = sorted({n for r in results for n in r.get("optimised_threads", [])})
    if counts:  # what the optimised mode ran at in the timed rounds (the header saw only the start)
        header["threads"]["optimised"] = counts[0] if len(counts) == 1 else counts
    header["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {"machine": header, "results": results}
    log(format_table(report))
    return report

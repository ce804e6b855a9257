"""``skipganomaly benchmark``: training and scoring throughput, plain versus optimised, side by side.

Both modes run the same networks (same sizes, same initial weights) on the same synthetic images
in one process, their timed rounds interleaved (plain, optimised, plain, ...), so a busy machine
slows both alike and the ratio holds. Each figure is the median over ``repeats`` rounds after
``warmup`` rounds.

* **plain**: the straightforward implementation, as the official code does it: fp32, eager,
  contiguous tensors, the library convolutions throughout, PyTorch's default Adam; images decoded
  per item into float tensors by a ``DataLoader``; a training step with three discriminator passes
  (D(x), D(x_hat) for the generator, then D(x_hat.detach()) again for the discriminator, each
  network's loss back-propagated into both networks); scoring under ``no_grad`` in batches of 64
  with two discriminator passes.
* **optimised**: what ``skipganomaly train`` and ``predict`` run: ``Trainer.train_epoch`` and
  ``scoring.score_set`` with the chosen precision, memory format and threads; images preloaded as
  one uint8 tensor; one D pass per input; fused Adam; 1x1 and 2x2 maps as matrix products;
  ``inference_mode`` and one D pass over [x; x_hat] for scoring.

Threads: the plain mode runs with PyTorch's default (one per core), as the official code does;
the optimised mode with the count ``skipganomaly train`` would choose (``runtime.ThreadChooser``:
the free cores, re-checked as it runs). ``--threads N`` fixes both.

``busy`` > 0 starts that many busy processes beside the measurement (``BusyProcesses``: each
spins one core, or with ``busy_kind="train"`` trains a copy of the model on one thread), so the
figures show what a shared machine does to each mode.

Peak memory is measured for each mode in a fresh child process (peak RSS on a CPU, peak allocated
memory on a GPU), so one mode's allocations do not hide in the other's.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.base import ImageSet, Splits
from ..models.blocks import set_dense_fast_path
from ..models.objective import LossWeights, discriminator_loss, generator_adversarial_loss
from ..runtime.device import peak_rss_mib, resolve_device
from ..runtime.precision import choose_precision, cpu_has_native_bf16
from ..runtime.threads import ThreadChooser
from ..scoring.engine import ScoringOptions, score_set
from ..specs.config import build_config
from ..training.trainer import RunLog, Trainer


@dataclass
class BenchmarkSettings:
    sizes: list[int] = field(default_factory=lambda: [32, 128])
    batch_size: int = 64
    score_batch_size: int = 256
    steps: int = 3  # training steps per timed round
    score_images: int = 512  # images scored per timed round
    repeats: int = 5
    warmup: int = 1
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    threads: int = 0
    channels: int = 3
    ngf: int = 64
    ndf: int = 64
    nz: int = 100
    memory: bool = True
    modes: tuple[str, ...] = ("plain", "optimised")
    busy: int = 0  # busy processes beside the measurement
    busy_kind: str = "spin"  # "spin" (one core at 100%) or "train" (a 1-thread training)


# --------------------------------------------------------------------------- data
def synthetic_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (N, H, W, C): upsampled 4x4 noise, like blurry photographs."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()


def synthetic_splits(n_train: int, n_test: int, size: int, channels: int) -> Splits:
    train = ImageSet(
        class_ids=np.zeros(n_train, np.int64),
        images=synthetic_images(n_train, size, channels, seed=0),
        labels=np.zeros(n_train, np.int64),
    )
    labels = (np.arange(n_test) % 2).astype(np.int64)
    test = ImageSet(class_ids=labels, images=synthetic_images(n_test, size, channels, seed=1), labels=labels)
    return Splits(train=train, val=test, test=test, protocol="val-split", channels=channels)


class PerItemImages(Dataset):
    """The straightforward input pipeline: each item converted to a float tensor in [-1, 1] when
    drawn (what torchvision's ToTensor + Normalize((0.5,), (0.5,)) do per image)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(255.0)
        return (image - 0.5) / 0.5, 0


# --------------------------------------------------------------------------- plain mode
class PlainMode:
    """The official code's procedure on these networks (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int, lr: float = 2e-4):
        self.model = set_dense_fast_path(copy.deepcopy(model), False).to(device)
        self.device = device
        self.batch_size = batch_size
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.weights = LossWeights()

    def train_step(self, x: torch.Tensor) -> float:
        g, d, w = self.model.generator, self.model.discriminator, self.weights
        fake = g(x)
        logit_real, features_real = d(x)
        logit_fake, features_fake = d(fake)
        self.opt_g.zero_grad()
        loss_g = (
            w.adversarial * generator_adversarial_loss(logit_fake)
            + w.contextual * (fake - x).abs().mean()
            + w.latent * (features_fake - features_real).pow(2).mean()
        )
        loss_g.backward(retain_graph=True)
        self.opt_g.step()
        self.opt_d.zero_grad()
        logit_fake_again, _ = d(fake.detach())
        loss_d = discriminator_loss(logit_real, logit_fake_again)
        loss_d.backward()
        self.opt_d.step()
        return loss_d.item()

    def train_epoch(self, images: np.ndarray) -> None:
        self.model.train()
        loader = DataLoader(PerItemImages(images), batch_size=self.batch_size, shuffle=True, drop_last=True)
        for x, _ in loader:
            self.train_step(x.to(self.device))

    def score(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        scores = []
        with torch.no_grad():
            for x, _ in DataLoader(PerItemImages(images), batch_size=64):
                x = x.to(self.device)
                fake = self.model.generator(x)
                _, features_real = self.model.discriminator(x)
                _, features_fake = self.model.discriminator(fake)
                rec = (x - fake).abs().flatten(1).mean(1)
                lat = (features_real - features_fake).pow(2).flatten(1).mean(1)
                scores.append((0.9 * rec + 0.1 * lat).cpu().numpy())
        return np.concatenate(scores)


# --------------------------------------------------------------------------- optimised mode
class OptimisedMode:
    """The package's own training epoch and scoring, configured as ``skipganomaly train`` is."""

    def __init__(self, settings: BenchmarkSettings, size: int, splits: Splits, run_dir: str):
        config = build_config(
            {
                "data.image_size": size,
                "data.batch_size": settings.batch_size,
                "data.eval_batch_size": settings.score_batch_size,
                "model.ngf": settings.ngf,
                "model.ndf": settings.ndf,
                "model.nz": settings.nz,
                "train.device": settings.device,
                "train.precision": settings.precision,
                "train.channels_last": settings.channels_last,
                "train.threads": settings.threads,
                "train.log_every": 10**9,
            }
        )
        self.trainer = Trainer(config, splits, run_dir, log=lambda message: None, progress=False)
        self.splits = splits
        self.epoch = 0

    def train_epoch(self) -> None:
        self.trainer.train_epoch(self.epoch, RunLog(None))
        self.epoch += 1

    def score(self) -> np.ndarray:
        t = self.trainer
        if t.device.type == "cpu":
            t.thread_chooser.apply()
        options = ScoringOptions.for_run(t.config, t.channels, t.device, t.amp_dtype)
        return score_set(t.model, self.splits.test, options).score


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
    from skipganomaly.benchmark import busy_training_step
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


def machine_description() -> dict[str, Any]:
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model_name,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
        if plain is not None:
            tasks[("score", "plain")] = as_plain(lambda: plain.score(splits.test.images))
        if optimised is not None:
            tasks[("score", "optimised")] = optimised.score
        optimised_threads: list[int] = []
        counts = {
            "train": len(train_images) // settings.batch_size * settings.batch_size,
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
        return result


def _child_peak(settings: BenchmarkSettings, size: int, task: str, mode: str) -> float | None:
    """Peak memory (MiB) of one task in one mode, measured in a fresh process."""
    payload = json.dumps({"settings": asdict(settings), "size": size, "task": task, "mode": mode})
    code = "import sys, skipganomaly.benchmark as b; b._child_main(sys.argv[1])"
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
    return settings.threads if settings.threads > 0 else _DEFAULT_THREADS


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


def format_header(header: dict[str, Any]) -> str:
    threads = header["threads"]
    busy = header.get("busy") or {"processes": 0}
    lines = [
        f"machine: {header['cpu']} ({header['cores']} cores, {header['cpu_capability']}, "
        f"native bf16: {'yes' if header['native_bf16'] else 'no'})"
        + (f"; GPU {header['gpu']}" if "gpu" in header else ""),
        f"torch {header['torch']}, python {header['python']}, device {header['device']}, "
        f"load average {', '.join(f'{v:.1f}' for v in header['load_average'] or [])}"
        + (
            f", {busy['processes']} busy process{'es' if busy['processes'] != 1 else ''} ({busy['kind']}) beside"
            if busy["processes"]
            else ""
        ),
        f"threads: plain {threads['plain']} (PyTorch's default unless --threads); optimised {header['threads_reason']}",
        f"plain: {header['plain_dtype']}; optimised: {header['optimised_dtype']}, channels_last "
        f"{'on' if header['channels_last'] else 'off'}; training batch {header['batch_size']}, scoring batch "
        f"{header['score_batch_size']['plain']} (plain) / {header['score_batch_size']['optimised']} (optimised)",
        f"protocol: {header['protocol']}",
    ]
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    rows = [
        f"{'size':>5}  {'task':<6} {'plain img/s':>12} {'optimised img/s':>16} {'ratio':>6} "
        f"{'plain peak MiB':>15} {'optimised peak MiB':>19}  threads plain/optimised"
    ]

    def number(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    for result in report["results"]:
        for task in ("train", "score"):
            rows.append(
                f"{result['size']:>5}  {task:<6} {number(result.get(f'{task}_plain_img_s')):>12} "
                f"{number(result.get(f'{task}_optimised_img_s')):>16} {number(result.get(f'{task}_ratio'), 2):>6} "
                f"{number(result.get(f'{task}_plain_peak_mib'), 0):>15} "
                f"{number(result.get(f'{task}_optimised_peak_mib'), 0):>19}  "
                f"{result.get('plain_threads', '-')}/{_span(result.get('optimised_threads') or [])}"
            )
    loads = [report["machine"].get(k) for k in ("load_average", "load_average_end")]
    if all(loads):
        rows.append(
            f"load average (1, 5, 15 min) at the start {_loads(loads[0])}, at the end {_loads(loads[1])}"
        )
    return "\n".join(rows)


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _loads(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)

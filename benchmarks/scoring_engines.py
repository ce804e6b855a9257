"""Scoring speed of the engines side by side: plain PyTorch (the official code's procedure), this
package's optimised PyTorch scoring, and the ONNX export on ONNX Runtime; images decoded from files.

    python benchmarks/scoring_engines.py [--sizes 32,128] [--images 512] [--rounds 5] [--json FILE]

One process, one CPU, the same networks (Skip-GANomaly, ngf = ndf = 64, nz = 100, 3 channels,
the benchmark's defaults; weights as initialised, BatchNorm statistics randomised so that folding
them is exercised) and the same PNG files, written once to a temporary folder. Each timed round
scores every file once in each mode, the modes interleaved (plain, torch, onnx, plain, ...), so a
busy machine slows all alike; figures are medians over the rounds after one warm-up round, and a
ratio is the median of the per-round ratios over plain.

* **plain**: ``skipganomaly benchmark``'s plain scoring (fp32, eager, the library's convolutions,
  ``no_grad``, batches of 64, two discriminator passes), fed as the official code is: a DataLoader
  whose dataset opens each file with Pillow, converts it and normalises it to [-1, 1].
* **torch**: ``Predictor.score_paths``, what ``skipganomaly predict`` runs (eval mode,
  ``inference_mode``, channels_last, dense 1x1 layers, one discriminator pass over [x; G(x)]),
  batches of 256.
* **onnx**: ``Detector.score_paths`` on the ``skipganomaly export`` of the same checkpoint, what
  ``predict --engine onnx`` and ``serve`` run (ONNX Runtime, BatchNorm folded, small maps as matrix
  products), batches of 256.

Every mode uses the same number of threads (``--threads``, default: the cores available).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import skipganomaly  # noqa: F401  (before numpy/torch: OpenMP's wait policy)

# isort: split
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from skipganomaly.benchmark import PlainMode, machine_description, synthetic_images
from skipganomaly.deploy.detector import Detector
from skipganomaly.deploy.export import export_checkpoint
from skipganomaly.deploy.predict import Predictor
from skipganomaly.formats.checkpoint import Checkpoint
from skipganomaly.formats.onnx_file import parse_exported
from skipganomaly.models import build_model
from skipganomaly.scoring.normalization import ScoreNormalization
from skipganomaly.specs.config import build_config


class PlainFiles(Dataset):
    """The official code's input pipeline for files: open, convert, to a float tensor in [-1, 1]
    (torchvision's ImageFolder with ToTensor and Normalize((0.5,) * 3, (0.5,) * 3))."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5, 0


def plain_score_files(plain: PlainMode, paths: list[str]) -> np.ndarray:
    """PlainMode.score, reading the files."""
    plain.model.eval()
    scores = []
    with torch.no_grad():
        for x, _ in DataLoader(PlainFiles(paths), batch_size=64):
            fake = plain.model.generator(x)
            _, features_real = plain.model.discriminator(x)
            _, features_fake = plain.model.discriminator(fake)
            rec = (x - fake).abs().flatten(1).mean(1)
            lat = (features_real - features_fake).pow(2).flatten(1).mean(1)
            scores.append((0.9 * rec + 0.1 * lat).numpy())
    return np.concatenate(scores)


def make_checkpoint(size: int, seed: int = 0) -> Checkpoint:
    config = build_config(
        {
            "data.image_size": size,
            "data.channels": 3,
            "model.ngf": 64,
            "model.ndf": 64,
            "model.nz": 100,
            "train.channels_last": True,
            "train.device": "cpu",
        }
    )
    torch.manual_seed(seed)
    model = build_model("skipganomaly", image_size=size, channels=3, ngf=64, ndf=64, nz=100)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return Checkpoint(
        model_name="skipganomaly",
        model_args=dict(model.args),
        config=config,
        state_dict=model.state_dict(),
        normalization=ScoreNormalization(low=0.0, high=1.0, threshold=0.5),
        epoch=0,
    )


def measure(size: int, n_images: int, rounds: int, folder: Path, log=print) -> dict:
    images = synthetic_images(n_images, size, 3, seed=size)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{size}_{i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    checkpoint = make_checkpoint(size)
    predictor = Predictor(checkpoint, "cpu")
    plain = PlainMode(predictor.model, torch.device("cpu"), 64)
    plain.model = plain.model.to(memory_format=torch.contiguous_format)
    started = time.perf_counter()
    exported = export_checkpoint(checkpoint)
    export_s = time.perf_counter() - started
    detector = Detector.from_exported(parse_exported(exported.model_bytes), threads=torch.get_num_threads())

    def torch_mode():
        return np.concatenate(
            [[p.raw_score for p in batch] for batch, _ in predictor.score_paths(paths, 256)]
        )

    def onnx_mode():
        return np.concatenate([[p.raw_score for p in batch] for batch, _ in detector.score_paths(paths, 256)])

    modes = {"plain": lambda: plain_score_files(plain, paths), "torch": torch_mode, "onnx": onnx_mode}
    # The three compute the same scores (fp32; the optimised paths differ in summation order only).
    reference = modes["plain"]()
    for name in ("torch", "onnx"):
        got = modes[name]()
        worst = float(np.max(np.abs(got - reference) / np.abs(reference)))
        assert worst < 1e-3, f"{name} scores differ from plain by {worst:.2e} (relative)"
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for round_index in range(rounds + 1):
        line = []
        for name, run in modes.items():
            started = time.perf_counter()
            run()
            elapsed = time.perf_counter() - started
            if round_index > 0:
                seconds[name].append(elapsed)
                line.append(f"{name} {n_images / elapsed:.1f}")
        log(
            f"  {size} px round {round_index}{' (warm-up)' if round_index == 0 else ''}: "
            + ", ".join(line)
            + " img/s"
        )
    result = {"size": size, "images": n_images, "export_s": round(export_s, 1), "modes": {}}
    for name, values in seconds.items():
        ratios = [p / v for p, v in zip(seconds["plain"], values, strict=True)]
        result["modes"][name] = {
            "img_s": n_images / statistics.median(values),
            "ratio": statistics.median(ratios),
            "rounds_img_s": [n_images / v for v in values],
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,128", help="image sizes (default 32,128)")
    parser.add_argument(
        "--images", default="512,64", help="files scored per round, per size (default 512,64)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (default 5)")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads for every mode (default: cores available)"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    counts = [int(v) for v in args.images.split(",")]
    counts += [counts[-1]] * (len(sizes) - len(counts))
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    machine = machine_description() | {"threads": threads}
    print(
        f"machine: {machine['cpu']} ({machine['cores']} cores, {machine['cpu_capability']}), {threads} threads; "
        f"load average at start {', '.join(f'{v:.1f}' for v in machine['load_average'])}"
    )
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size, count in zip(sizes, counts, strict=True):
            results.append(measure(size, count, args.rounds, Path(folder)))
    machine["load_average_end"] = os.getloadavg()
    print(f"load average at end {', '.join(f'{v:.1f}' for v in machine['load_average_end'])}")
    print(f"{'size':>5} {'mode':<6} {'img/s':>9} {'x plain':>8}")
    for result in results:
        for name, values in result["modes"].items():
            print(f"{result['size']:>5} {name:<6} {values['img_s']:>9.1f} {values['ratio']:>8.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

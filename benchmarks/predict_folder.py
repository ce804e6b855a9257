"""Large-scale scoring: ``predict`` over a folder of many small images, with images/s and memory.

    python benchmarks/predict_folder.py --run runs/quickstart --images 10000 [--workers 1] [--heatmaps]

Makes ``--images`` small PNG files (smooth random content, ``--image-size`` pixels, in a temporary
folder that is deleted afterwards unless ``--folder`` names one to keep or reuse), then scores them
with ``predict_to_csv`` in this process, as ``skipganomaly predict`` does, and prints the scoring
rate (without the start-up), the peak RSS of this process and of the largest DataLoader worker.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import skipganomaly  # noqa: F401  (before numpy/torch: OpenMP's wait policy)

# isort: split
import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, size: int, channels: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8).squeeze()
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(sub / f"img{i:06d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a training run folder")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3])
    parser.add_argument("--folder", help="where the images are (made there if empty); default: a temp folder")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--heatmaps", action="store_true", help="also write one heatmap PNG per image")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from skipganomaly.deploy.predict import Predictor, predict_to_csv

    temporary = tempfile.mkdtemp(prefix="skipganomaly-predict-")
    folder = Path(args.folder) if args.folder else Path(temporary) / "images"
    try:
        if not folder.exists() or not any(folder.iterdir()):
            started = time.perf_counter()
            make_images(folder, args.images, args.image_size, args.channels)
            print(f"made {args.images} images in {folder} ({time.perf_counter() - started:.0f} s)")
        predictor = Predictor.from_run(args.run, device=args.device)
        heatmaps = Path(temporary) / "heatmaps" if args.heatmaps else None
        started = time.perf_counter()
        counts = predict_to_csv(
            predictor,
            [str(folder)],
            Path(temporary) / "predictions.csv",
            heatmaps,
            batch_size=args.batch_size,
            workers=args.workers,
            log=lambda message: None,
        )
        seconds = time.perf_counter() - started
        main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"scored {counts['scored']} images in {seconds:.1f} s: {counts['scored'] / seconds:.0f} images/s "
            f"(workers {args.workers}, batch {args.batch_size}, heatmaps {'on' if heatmaps else 'off'}, "
            f"device {predictor.device}, model {predictor.image_size} px)"
        )
        print(
            f"peak RSS: {main_peak:.0f} MiB in the scoring process"
            + (f", {worker_peak:.0f} MiB in the largest worker" if args.workers else "")
        )
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

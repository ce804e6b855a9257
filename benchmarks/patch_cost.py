"""What the patch term costs at scoring: milliseconds per image of ``model.score`` (eval mode, with
maps, as validation and ``predict`` call it) for the ``restoring`` preset's model with and without
the ``patch`` term, timed side by side (interleaved repeats, medians) so that the machine's load
falls on both alike. The term adds nothing to a training step: it is computed only when scoring.

    python benchmarks/patch_cost.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from skipganomaly.models import SkipGANomaly
from skipganomaly.specs.models import SKIPGANOMALY

# (image size, width, batch): the benchmark's CIFAR size and the 128-pixel MVTec runs of the docs.
SETTINGS = ((32, 64, 64), (128, 32, 16))


def restoring_model(size: int, width: int, with_patch: bool) -> SkipGANomaly:
    terms = SKIPGANOMALY.presets["restoring"]["model.score_terms"].split(",")
    terms = [t for t in terms if with_patch or t != "patch"]
    return SkipGANomaly(
        size, 3, width, width, 100, rotation_head=True, score_terms=",".join(terms), segmentation_head=True,
        map_smoothing="0.01", map_pooling="1,0.01", map_baseline="none,mean",
    ).eval()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; ms per image, median of {args.repeats}")
    for size, width, batch in SETTINGS:
        models = {flag: restoring_model(size, width, flag) for flag in (False, True)}
        x = torch.rand(batch, 3, size, size) * 2 - 1
        times: dict[bool, list[float]] = {False: [], True: []}
        with torch.inference_mode():
            for model in models.values():
                model.score(x, details=True)  # warm-up
            for _ in range(args.repeats):
                for flag, model in models.items():
                    start = time.perf_counter()
                    model.score(x, details=True)
                    times[flag].append((time.perf_counter() - start) * 1000 / batch)
        without, with_patch = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"  {size} px, width {width}: without {without:.2f}, with the patch term {with_patch:.2f} "
            f"({with_patch / without:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is the fast mode as accurate as plain fp32? Train the same runs in both and compare test AUROC.

    python benchmarks/accuracy.py --dataset digits --abnormal-class 0 --seeds 0,1,2 --epochs 15
    python benchmarks/accuracy.py --dataset cifar10 --data-root /path/cifar10-jpeg75.tar.gz \
        --abnormal-class automobile --seeds 0 --epochs 15

Modes (each one ``skipganomaly train`` run per seed, in a subprocess):

* ``fp32``: ``--precision fp32``, default memory format;
* ``fast``: ``--precision auto`` (bf16 autocast where the CPU or GPU has native bf16, fp32
  elsewhere) and ``train.channels_last=true``;
* ``bf16``: bf16 autocast forced (on CPUs without native bf16 it is emulated and many times slower).

The dense 1x1 layers and fused Adam are always on: they compute the same function (unit tests
compare them with the library kernels and PyTorch's default Adam). Prints per-seed test AUROCs,
their mean and standard deviation per mode, and writes ``summary.json`` under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {
    "fp32": ["--precision", "fp32", "--set", "train.channels_last=false"],
    "fast": ["--precision", "auto", "--set", "train.channels_last=true"],
    "bf16": ["--precision", "bf16", "--set", "train.channels_last=true"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root")
    parser.add_argument("--abnormal-class", default="0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--modes", default="fp32,fast")
    parser.add_argument("--output", default="runs/accuracy")
    parser.add_argument("extra", nargs="*", help="more train options after --, e.g. -- --set model.ngf=32")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    output = Path(args.output)
    results: dict[str, dict[int, dict]] = {mode: {} for mode in modes}
    for seed in seeds:
        for mode in modes:
            run_dir = output / f"{args.dataset}-{args.abnormal_class}-{mode}-seed{seed}"
            command = [sys.executable, "-m", "skipganomaly", "train", "--dataset", args.dataset]
            command += ["--abnormal-class", args.abnormal_class, "--epochs", str(args.epochs)]
            command += ["--seed", str(seed), "--output", str(run_dir), "--quiet", *MODES[mode], *args.extra]
            if args.data_root:
                command += ["--data-root", args.data_root]
            metrics_file = run_dir / "metrics.json"
            started = time.perf_counter()
            if not metrics_file.exists():
                resume = (run_dir / "checkpoints" / "last.pt").exists()
                if resume:
                    command = [
                        sys.executable,
                        "-m",
                        "skipganomaly",
                        "train",
                        "--resume",
                        str(run_dir),
                        "--quiet",
                    ]
                print(f"{mode} seed {seed}: {' '.join(command[2:])}", flush=True)
                subprocess.run(command, check=True)
            metrics = json.loads(metrics_file.read_text())
            results[mode][seed] = {
                "test_auroc": metrics["test"]["auroc"],
                "val_auroc": metrics["val"]["auroc"],
                "epoch_best": metrics["epoch_best"],
                "wall_time_s": metrics.get("wall_time_s"),
            }
            print(
                f"{mode} seed {seed}: test AUROC {metrics['test']['auroc']:.4f} "
                f"(epoch {metrics['epoch_best']}, {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print(f"\n{args.dataset}, abnormal class {args.abnormal_class}, {args.epochs} epochs: test AUROC")
    print(f"{'mode':<6} " + " ".join(f"{'seed ' + str(s):>8}" for s in seeds) + f" {'mean':>8} {'std':>8}")
    summary = {}
    for mode in modes:
        values = [results[mode][s]["test_auroc"] for s in seeds]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[mode] = {"per_seed": results[mode], "mean": mean, "std": std}
        print(f"{mode:<6} " + " ".join(f"{v:>8.4f}" for v in values) + f" {mean:>8.4f} {std:>8.4f}")
    if len(modes) > 1:
        base = modes[0]
        for mode in modes[1:]:
            diffs = [results[mode][s]["test_auroc"] - results[base][s]["test_auroc"] for s in seeds]
            print(f"{mode} - {base} per seed: " + ", ".join(f"{d:+.4f}" for d in diffs))
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {output / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

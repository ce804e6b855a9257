"""Results to the last digit: the same runs with two source trees, their outputs compared.

    git worktree add /tmp/old <commit>
    python benchmarks/parity.py --source /tmp/old/src --output /tmp/parity-old
    python benchmarks/parity.py --source src --output /tmp/parity-new
    python benchmarks/parity.py --compare /tmp/parity-old /tmp/parity-new   # exit 1 on a difference

For a change that must not change results (a move, a split). Each tree runs ``python -m
skipganomaly`` with that tree first on ``PYTHONPATH``, one thread count fixed per run (the
automatic count follows the machine's load), on the embedded digits:

* the quick start (``--config digits-quick``) with 1 and with 2 threads, a ``--preset reference``
  run of the full-size model for 2 epochs, the quick start under ``normal-only``, the paper
  protocol with ``eval.paper_each_epoch``, and GANomaly;
* ``test`` of the first run, ``predict`` with both engines (with heatmaps), ``export`` of the
  reference run, and ``reproduce`` of one digit for 2 epochs.

What is kept: the SHA-256 of every tensor of ``best`` and ``last`` (weights and their average)
and their content hashes, ``metrics.json`` and ``test-best.json`` without wall times,
``scores.csv``, the step and epoch records of ``log.jsonl``, the prediction CSVs and heatmap
bytes, the exported graph's content hash and metadata, ``reproduce``'s ``results.csv``, and what
each command printed (times aside). A checkpoint file's own bytes are not compared: it stores
wall times. Compare two trees on one machine: another CPU sums in another order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

QUICK = ["--config", "digits-quick", "--quiet"]
TRAININGS = {
    "quick1": [*QUICK, "--abnormal-class", "0", "--set", "train.threads=1"],
    "quick2": [*QUICK, "--abnormal-class", "0", "--set", "train.threads=2"],
    "reference": ["--preset", "reference", "--epochs", "2", "--abnormal-class", "0", "--quiet",
                  "--set", "train.threads=2"],
    "normal-only": [*QUICK, "--protocol", "normal-only", "--abnormal-class", "3", "--set", "train.threads=1"],
    "paper": [*QUICK, "--preset", "paper", "--protocol", "paper", "--abnormal-class", "1",
              "--set", "eval.paper_each_epoch=true", "--set", "train.threads=1"],
    "ganomaly": [*QUICK, "--model", "ganomaly", "--preset", "reference", "--epochs", "2",
                 "--set", "eval.paper_each_epoch=true", "--set", "train.threads=1"],
}  # fmt: skip
WALL_TIMES = {"wall_time_s", "seconds", "elapsed_s", "exported_at"}


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in WALL_TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def run_digest(run: Path) -> str:
    """A run folder as comparable text."""
    import torch

    out = []
    for name in ("metrics.json", "test-best.json"):
        if (run / name).exists():
            metrics = without_times(json.loads((run / name).read_text()))
            out.append(f"== {name}\n{json.dumps(metrics, indent=1, sort_keys=True)}")
    if (run / "scores.csv").exists():
        out.append("== scores.csv\n" + (run / "scores.csv").read_text())
    for which in ("best", "last"):
        checkpoint = torch.load(run / "checkpoints" / f"{which}.pt", weights_only=True)
        for key in ("state_dict", "ema_state_dict"):
            if checkpoint.get(key) is not None:
                digest = hashlib.sha256()
                for name in sorted(checkpoint[key]):
                    digest.update(name.encode())
                    digest.update(checkpoint[key][name].contiguous().numpy().tobytes())
                out.append(f"== {which}.{key} {digest.hexdigest()}")
        out.append(f"== {which}.content_hash {checkpoint.get('content_hash')} epoch {checkpoint['epoch']}")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kept = [without_times(r) for r in records if r.get("event") in ("step", "epoch", "d_reinit", "end")]
    out.append("== log.jsonl\n" + "\n".join(json.dumps(r, sort_keys=True) for r in kept))
    return "\n".join(out)


def write_images(folder: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    digits = load_digits()
    for i in range(40):
        image = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).resize((24, 24)).save(folder / f"d{i:02d}_{digits.target[i]}.png")


def collect(source: Path, output: Path) -> None:
    """Run everything with ``source`` first on the path; write the comparable texts to ``output``."""
    env = dict(os.environ, PYTHONPATH=str(source.resolve()))
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        env["SKIPGANOMALY_CACHE"] = str(work / "cache")

        def cli(name: str, *args: str) -> None:
            done = subprocess.run(
                [sys.executable, "-m", "skipganomaly", *args], env=env, capture_output=True, text=True
            )
            printed = (done.stdout + done.stderr).replace(str(work), "WORK")
            printed = re.sub(r"\d+(\.\d+)? ?s\b|\d+(\.\d+)? ms/step", "T", printed)
            (output / f"{name}.printed").write_text(f"exit {done.returncode}\n{printed}")

        for name, args in TRAININGS.items():
            cli(f"train-{name}", "train", *args, "--output", str(work / name))
            (output / f"run-{name}.txt").write_text(run_digest(work / name))
        cli("test", "test", "--run", str(work / "quick1"), "--device", "cpu")
        (output / "run-quick1-tested.txt").write_text(run_digest(work / "quick1"))
        write_images(work / "images")
        for engine in ("torch", "onnx"):
            heatmaps = ["--heatmaps", str(work / "heatmaps")] if engine == "torch" else []
            csv = work / f"{engine}.csv"
            cli(f"predict-{engine}", "predict", "--run", str(work / "quick1"), str(work / "images"),
                "--output", str(csv), "--engine", engine, *heatmaps)  # fmt: skip
            (output / f"predict-{engine}.csv").write_text(csv.read_text().replace(str(work), "WORK"))
        maps = sorted((work / "heatmaps").glob("*.png"))
        (output / "heatmaps.txt").write_text(
            "\n".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in maps)
        )
        cli("export", "export", "--run", str(work / "reference"), "--output", str(work / "reference.onnx"))
        for name, path in (
            ("quick1", work / "quick1" / "exports" / "best.onnx"),
            ("reference", work / "reference.onnx"),
        ):
            (output / f"export-{name}.txt").write_text(export_digest(path))
        cli("reproduce", "reproduce", "--dataset", "digits", "--classes", "0", "--epochs", "2",
            "--output", str(work / "reproduce"), "--set", "train.threads=1", "--quiet")  # fmt: skip
        rows = (work / "reproduce" / "results.csv").read_text().splitlines()
        column = rows[0].split(",").index("wall_time_s")
        kept = [",".join(v for i, v in enumerate(row.split(",")) if i != column) for row in rows]
        (output / "reproduce-results.csv").write_text("\n".join(kept))


def export_digest(path: Path) -> str:
    """An export's content hash and metadata, without when it was written and the checkpoint
    file's own hash (the file stores wall times)."""
    from skipganomaly.formats.onnx_file import read_exported

    exported = read_exported(path)
    metadata = without_times(exported.metadata)
    metadata["checkpoint"].pop("sha256", None)
    return f"{exported.content_sha256}\n{json.dumps(metadata, indent=1, sort_keys=True)}"


def compare(first: Path, second: Path) -> int:
    names = sorted({p.name for p in first.iterdir()} | {p.name for p in second.iterdir()})
    differing = []
    for name in names:
        a, b = first / name, second / name
        same = a.exists() and b.exists() and a.read_text() == b.read_text()
        print(f"{'same' if same else 'DIFFERENT'}  {name}")
        if not same:
            differing.append(name)
    print(f"{len(names) - len(differing)} of {len(names)} outputs identical")
    return 1 if differing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="a tree's src/ folder to run")
    parser.add_argument("--output", type=Path, help="where to write its comparable outputs")
    parser.add_argument("--compare", nargs=2, type=Path, metavar="DIR", help="two --output folders")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not (args.source and args.output):
        parser.error("give --source and --output, or --compare DIR DIR")
    collect(args.source, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

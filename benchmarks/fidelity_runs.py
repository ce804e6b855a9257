"""The fidelity check's data and training runs (``benchmarks/fidelity.py``): CIFAR-10 class
folders converted once into python batches that both sides read, and each side's training
(the official code in its own interpreter, ours through ``skipganomaly train``), reused when
complete."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from skipganomaly.data.archives import is_archive, unpack_archive
from skipganomaly.data.cifar import BATCHES_DIR, CLASS_NAMES, TEST_BATCHES, TRAIN_BATCHES
from skipganomaly.specs.config import build_config

# The official code's test() prints "... AUC: 0.794 max AUC: 0.794" once per epoch.
OFFICIAL_AUC = re.compile(r"\bAUC: ([0-9.]+) max AUC")
CONVERTED_STAMP = "converted.json"

# Runs the official train.py's three steps (options, data, model) in the official interpreter.
# torchvision checks the MD5 of each CIFAR-10 file against the published archive's; converted
# batches differ, so the check is answered yes. Nothing in the official code is changed here.
OFFICIAL_LAUNCHER = """
import sys
import torchvision.datasets.cifar as cifar
cifar.CIFAR10._check_integrity = lambda self: True
cifar.check_integrity = lambda *args, **kwargs: True
sys.path.insert(0, sys.argv[1])
sys.argv = ["train.py"] + sys.argv[2:]
from options import Options
from lib.data.dataloader import load_data
from lib.models import load_model
opt = Options().parse()
data = load_data(opt)
model = load_model(opt, data)
print(f"fidelity: input-noise buffer max |value| {float(model.noise.abs().max()):.3g}", flush=True)
model.train()
"""


# --------------------------------------------------------------------------- data
def class_folder_root(root: Path) -> Path | None:
    """The folder holding train/<class>/ and test/<class>/ (itself or its single sub-folder)."""
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def python_batches(root: Path) -> Path | None:
    for candidate in (root, root / BATCHES_DIR):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def read_class_folders(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and int64 labels of ``root/part/<class>/*``, class by class."""
    images, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        folder = root / part / name
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        for path in files:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            if array.shape != (32, 32, 3):
                raise SystemExit(f"{path} is {array.shape[1]}x{array.shape[0]}, not a 32x32 CIFAR-10 image")
            images.append(array)
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, label: str) -> None:
    """One batch in CIFAR-10's python format, with str keys as the published files load (which
    torchvision needs); each row is the image's red, green then blue plane."""
    batch = {
        "batch_label": label,
        "labels": [int(x) for x in labels],
        "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1)),
        "filenames": [f"converted_{i:05d}.png" for i in range(len(images))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def convert_class_folders(root: Path, work: Path, seed: int) -> Path:
    """``work/converted-seed<S>/cifar-10-batches-py``: every image of the class folders, in a
    seeded permutation (so the classes come mixed, as in CIFAR-10's own files), as python batches.
    Written once; reused while the stamp matches."""
    target = work / f"converted-seed{seed}"
    batches = target / BATCHES_DIR
    stamp = {"source": str(root.resolve()), "order_seed": seed}
    stamp_file = target / CONVERTED_STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()).get("stamp") == stamp:
        return batches
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {}
    started = time.perf_counter()
    for part, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        images, labels = read_class_folders(root, part)
        order = rng.permutation(len(labels))
        images, labels = images[order], labels[order]
        counts[part] = len(labels)
        for i, (chunk_images, chunk_labels) in enumerate(
            zip(np.array_split(images, len(names)), np.array_split(labels, len(names)), strict=True)
        ):
            label = f"{part} batch {i + 1} of {len(names)} (converted from class folders)"
            write_batch(batches / names[i], chunk_images, chunk_labels, label)
    meta = {"label_names": list(CLASS_NAMES), "num_cases_per_batch": counts["train"] // 5, "num_vis": 3072}
    with open(batches / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    stamp_file.write_text(json.dumps({"stamp": stamp, "counts": counts}) + "\n")
    print(
        f"converted {counts['train']:,} training and {counts['test']:,} test images from {root} into "
        f"{batches} (order seed {seed}, {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return batches


def resolve_batches(data_root: Path, work: Path, seed: int) -> Path | None:
    if is_archive(data_root):
        data_root = unpack_archive(data_root, build_config({}).data)
    found = python_batches(data_root)
    if found is not None:
        return found
    folders = class_folder_root(data_root)
    return None if folders is None else convert_class_folders(folders, work, seed)


# --------------------------------------------------------------------------- the two sides
def run_logged(command: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> int:
    print(f"  $ {' '.join(command)}\n    (log: {log})", flush=True)
    with open(log, "w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode


def run_official(args, batches: Path, name: str, run_dir: Path) -> dict:
    result_file = run_dir / "result.json"
    if result_file.is_file() and not args.fresh:
        return json.loads(result_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    data_link = run_dir / "data"  # the official code reads CIFAR-10 from ./data (hard-coded)
    if data_link.is_symlink() or data_link.exists():
        data_link.unlink()
    data_link.symlink_to(batches.parent.resolve(), target_is_directory=True)
    command = [args.official_python, "-c", OFFICIAL_LAUNCHER, str(args.official.resolve())]
    command += ["--dataset", "cifar10", "--abnormal_class", name, "--niter", str(args.epochs)]
    command += ["--batchsize", str(args.batch_size), "--ngf", str(args.ngf), "--ndf", str(args.ndf)]
    command += ["--nz", str(args.nz), "--manualseed", str(args.seed), "--device", "cpu", "--gpu_ids", "-1"]
    command += ["--outf", str(run_dir / "output")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started = time.perf_counter()
    code = run_logged(command, run_dir / "official.log", cwd=run_dir, env=env)
    text = (run_dir / "official.log").read_text(errors="replace")
    per_epoch = [float(v) for v in OFFICIAL_AUC.findall(text)]
    if code != 0 or len(per_epoch) != args.epochs:
        tail = "\n".join(text.splitlines()[-15:])
        hint = ""
        if "modified by an inplace operation" in text:
            hint = "\nthe official code is unpatched: see docs/fidelity-check.md (what the patch changes)"
        raise SystemExit(
            f"the official code failed (exit {code}); end of {run_dir / 'official.log'}:\n{tail}{hint}"
        )
    noise = re.search(r"input-noise buffer max \|value\| (\S+)", text)
    result = {
        "paper_auroc": per_epoch,
        "seconds": time.perf_counter() - started,
        "noise_buffer_max_abs": float(noise.group(1)) if noise else None,
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_ours(args, batches: Path, name: str, run_dir: Path) -> dict:
    metrics_file = run_dir / "metrics.json"
    if not (metrics_file.is_file() and not args.fresh):
        command = [sys.executable, "-m", "skipganomaly", "train", "--dataset", "cifar10"]
        command += ["--data-root", str(batches), "--abnormal-class", name, "--epochs", str(args.epochs)]
        command += ["--preset", "reference", "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
        command += ["--precision", "fp32", "--device", "cpu", "--output", str(run_dir), "--quiet"]
        for key, value in (
            ("model.ngf", args.ngf),
            ("model.ndf", args.ndf),
            ("model.nz", args.nz),
            ("train.lr_decay", "none"),  # the official scheduler never steps
            ("train.input_noise_std", 0.0),  # the official noise buffer is never filled
            ("train.threads", args.threads),
            ("eval.paper_each_epoch", "true"),
        ):
            command += ["--set", f"{key}={value}"]
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        code = run_logged(command, run_dir.parent / f"{run_dir.name}.log")
        if code != 0:
            raise SystemExit(
                f"our training failed (exit {code}); see {run_dir.parent / f'{run_dir.name}.log'}"
            )
        print(f"    ours: {time.perf_counter() - started:.0f} s", flush=True)
    metrics = json.loads(metrics_file.read_text())
    history = metrics["history"]
    return {
        "paper_auroc": [h["paper"]["auroc"] for h in history],
        "honest_test_auroc": [h["test"]["auroc"] for h in history],
        "honest_val_auroc": [h["val"]["auroc"] for h in history],
        "epoch_best": metrics["epoch_best"],
        "honest_auroc_at_best": metrics["test"]["auroc"],
        "seconds": sum(h["seconds"] for h in history),
    }

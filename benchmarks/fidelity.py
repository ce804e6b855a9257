"""Fidelity check: the official Skip-GANomaly code and ours, trained side by side at matched settings.

    python benchmarks/fidelity.py --official /path/to/skip-ganomaly \
        --official-python /path/to/venv/bin/python --data-root /path/to/cifar10 \
        --classes automobile bird cat --epochs 3 --ngf 16 --ndf 16

Both sides read the same CIFAR-10 images in the same order, with the same width, epochs, batch
size (64), and the official defaults (our ``reference`` preset: Adam lr 2e-4, beta1 0.5,
w_adv 1, w_con 50, w_lat 1, constant learning rate, no input noise). Per class and epoch it
prints the official code's AUROC (its own test: train-mode BatchNorm over its test set), ours
under the ``paper`` protocol (the same procedure, ``eval.paper_each_epoch``), their difference,
and our honest figure from the same training (eval mode, the ``val-split`` test half). Both sides
report every epoch; compare epoch by epoch (the official code then keeps its best epoch, chosen
on the test set).

* ``--official``: a checkout of https://github.com/samet-akcay/skip-ganomaly, patched only so it
  runs on current PyTorch (docs/fidelity-check.md says what to change). Nothing of it is copied
  here; it runs in its own interpreter (``--official-python``, which needs torchvision), started
  by the small launcher below, which only makes torchvision accept converted CIFAR-10 batches
  (their MD5s are not the published ones) and reports the official model's input-noise buffer.
* ``--data-root``: CIFAR-10 as python batches (``cifar-10-batches-py``) or as class folders
  ``train/<class>/*`` and ``test/<class>/*`` (or an archive of them). Class folders are converted
  once into python batches in a seeded, class-mixed order (``--order-seed``) under ``--work``, and
  both sides read those: the official code through torchvision, ours through its CIFAR-10 reader.

Runs are kept under ``--work`` (default: the skipganomaly cache, ``fidelity/``) and reused when
complete, so an interrupted check continues where it stopped; ``--fresh`` retrains. Exits 0 with
a message, training nothing, when the official checkout or the data is absent.
"""

from __future__ import annotations

import argparse
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
from skipganomaly.runtime.files import cache_root
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


# The official model's first training steps on the first batches of its training set (in order,
# not shuffled), from its own initial weights, which are saved with the losses of each step.
OFFICIAL_STEPS_LAUNCHER = """
import sys
import torch
import torchvision.datasets.cifar as cifar
cifar.CIFAR10._check_integrity = lambda self: True
cifar.check_integrity = lambda *args, **kwargs: True
official, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, official)
sys.argv = ["train.py"] + sys.argv[4:]
from options import Options
from lib.data.dataloader import load_data
from lib.models import load_model
opt = Options().parse()
data = load_data(opt)
model = load_model(opt, data)
def weights():
    return {"g": {k: v.detach().clone() for k, v in model.netg.state_dict().items()},
            "d": {k: v.detach().clone() for k, v in model.netd.state_dict().items()}}
initial = weights()
dataset = data.train.dataset
losses = []
for step in range(steps):
    items = [dataset[i] for i in range(step * opt.batchsize, (step + 1) * opt.batchsize)]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([int(label) for _, label in items])
    model.set_input((images, labels))
    model.optimize_params()
    losses.append(dict(model.get_errors()))
torch.save({"initial": initial, "final": weights(), "losses": losses}, out)
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


# --------------------------------------------------------------------------- the same weights
def official_weights_into_ours(official_g: dict, official_d: dict, model) -> None:
    """Copy the official networks' tensors into our SkipGANomaly (the same architecture: both
    list their tensors in the same order, checked by shape; the decoder's concatenations put
    their two halves the other way round). The official classifier is a 3x3
    padded convolution on a 1x1 map: only its centre tap ever sees data, which is our 1x1 one."""
    import torch

    def tensors(state: dict) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]

    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = tensors(official_g) + tensors(official_d)
    if len(theirs) != len(ours):
        raise SystemExit(
            f"the official networks hold {len(theirs)} tensors, ours {len(ours)}: not the same model"
        )
    mapped = {}
    for (their_key, value), (our_key, target) in zip(theirs, ours.items(), strict=True):
        if their_key.endswith("classifier.weight") and value.shape[-1] == 3:
            value = value[:, :, 1:2, 1:2]
        if re.fullmatch(r"generator\.up\.[1-9]\d*\.1\.weight", our_key):
            # The official blocks concatenate [skip, decoded], ours [decoded, skip]: the same
            # function with the input channels of each decoder convolution in the other order.
            skip, decoded = value.chunk(2, dim=0)
            value = torch.cat([decoded, skip], dim=0)
        if value.shape != target.shape:
            raise SystemExit(
                f"official {their_key} {tuple(value.shape)} does not fit our {our_key} {tuple(target.shape)}"
            )
        mapped[our_key] = value
    model.load_state_dict(mapped, strict=False)


def cross_score(
    args, batches: Path, name: str, official_dir: Path, official: dict, ours_dir: Path
) -> list[dict]:
    """Score the same weights both ways over the paper protocol's set, order and batches: with our
    ``paper`` protocol (L1 reconstruction term, as we train) and with the official formula
    (squared error). The official code's saved weights must give its own AUROC the second way;
    our last epoch's weights give our paper figure the first way, and the second way shows what
    the official formula would make of our training."""
    import torch

    from skipganomaly.data import prepare_data
    from skipganomaly.data.loading import iterate_batches, to_model_input
    from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
    from skipganomaly.models import SkipGANomaly
    from skipganomaly.scoring.engine import ScoringOptions, batchnorm_train_mode, score_set
    from skipganomaly.scoring.metrics import auroc

    values = {"data.dataset": "cifar10", "data.root": str(batches), "data.abnormal_class": name}
    splits = prepare_data(build_config(values).data)
    pool = splits.paper_evaluation_set()

    def both_ways(model) -> dict[str, float]:
        """AUROCs of the score with the squared-error R and with our L1 R (train-mode BatchNorm),
        and of its terms alone, with each term's mean over the normal images."""
        options = ScoringOptions(
            image_size=32,
            channels=3,
            batch_size=args.batch_size,
            device=torch.device("cpu"),
            batchnorm_train=True,
        )
        ours = score_set(model, pool, options)
        terms: dict[str, list[np.ndarray]] = {"r_squared": [], "r_l1": [], "latent": []}
        labels = []
        with batchnorm_train_mode(model), torch.inference_mode():
            for batch in iterate_batches(pool, args.batch_size, image_size=32, channels=3):
                x = to_model_input(batch.images)
                x_hat = model.generator(x)
                _, real = model.discriminator(x)
                _, fake = model.discriminator(x_hat)
                terms["r_squared"].append((x - x_hat).pow(2).flatten(1).mean(1).float().numpy())
                terms["r_l1"].append((x - x_hat).abs().flatten(1).mean(1).float().numpy())
                terms["latent"].append((real - fake).pow(2).flatten(1).mean(1).float().numpy())
                labels.append(batch.labels.numpy())
        y = np.concatenate(labels)
        t = {k: np.concatenate(v) for k, v in terms.items()}
        result = {
            "scored_squared": auroc(y, 0.9 * t["r_squared"] + 0.1 * t["latent"]),
            "scored_l1": auroc(ours.labels, ours.score),
        }
        for key, values in t.items():
            result[f"auroc_{key}"] = auroc(y, values)
            result[f"mean_normal_{key}"] = float(values[y == 0].mean())
        return result

    weights = official_dir / "output" / "skipganomaly" / "cifar10" / "train" / "weights"
    rows = []
    for epoch in range(1, args.epochs + 1):
        g_file, d_file = weights / f"netG_{epoch - 1}.pth", weights / f"netD_{epoch - 1}.pth"
        if not (g_file.is_file() and d_file.is_file()):
            continue  # the official code saves an epoch's weights only when its AUROC improved
        model = SkipGANomaly(32, 3, ngf=args.ngf, ndf=args.ndf, nz=args.nz)
        official_weights_into_ours(
            torch.load(g_file, weights_only=True)["state_dict"],
            torch.load(d_file, weights_only=True)["state_dict"],
            model,
        )
        rows.append(
            {"weights": "official", "epoch": epoch, "reported": official["paper_auroc"][epoch - 1]}
            | both_ways(model)
        )
    last = checkpoint_path(ours_dir, "last")
    if last.is_file():
        checkpoint = load_checkpoint(last)
        history = json.loads((ours_dir / "metrics.json").read_text())["history"]
        epoch = checkpoint.epoch
        rows.append(
            {"weights": "ours", "epoch": epoch, "reported": history[epoch - 1]["paper"]["auroc"]}
            | both_ways(checkpoint.build_model())
        )
    return rows


def compare_steps(args, batches: Path, name: str, run_dir: Path) -> dict:
    """The first ``args.steps`` training steps of both codes from the same initial weights (the
    official ones, copied into ours) on the same batches: their losses step by step, and how far
    the weights have drifted apart at the end, relative to how far training moved them."""
    import torch

    from skipganomaly.data import prepare_data
    from skipganomaly.data.loading import to_model_input
    from skipganomaly.models import SkipGANomaly
    from skipganomaly.training.trainer import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    official_file = run_dir / f"official-{args.steps}-steps.pt"
    if not official_file.is_file() or args.fresh:
        data_link = run_dir / "data"
        if not data_link.exists():
            data_link.symlink_to(batches.parent.resolve(), target_is_directory=True)
        command = [args.official_python, "-c", OFFICIAL_STEPS_LAUNCHER, str(args.official.resolve())]
        command += [str(official_file), str(args.steps), "--dataset", "cifar10", "--abnormal_class", name]
        command += ["--batchsize", str(args.batch_size), "--ngf", str(args.ngf), "--ndf", str(args.ndf)]
        command += [
            "--nz",
            str(args.nz),
            "--manualseed",
            str(args.seed),
            "--device",
            "cpu",
            "--gpu_ids",
            "-1",
        ]
        command += ["--outf", str(run_dir / "output")]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if run_logged(command, run_dir / "official-steps.log", cwd=run_dir, env=env) != 0:
            raise SystemExit(f"the official steps failed; see {run_dir / 'official-steps.log'}")
    saved = torch.load(official_file, weights_only=True)
    values = {
        "data.dataset": "cifar10",
        "data.root": str(batches),
        "data.abnormal_class": name,
        "data.batch_size": args.batch_size,
        "model.ngf": args.ngf,
        "model.ndf": args.ndf,
        "model.nz": args.nz,
        "train.preset": "reference",
        "train.device": "cpu",
        "train.threads": args.threads,
    }
    config = build_config(values)
    splits = prepare_data(config.data)
    official_final = SkipGANomaly(32, 3, ngf=args.ngf, ndf=args.ndf, nz=args.nz)
    official_weights_into_ours(saved["final"]["g"], saved["final"]["d"], official_final)
    official_initial = SkipGANomaly(32, 3, ngf=args.ngf, ndf=args.ndf, nz=args.nz)
    official_weights_into_ours(saved["initial"]["g"], saved["initial"]["d"], official_initial)

    def drift(model) -> dict[str, float]:
        """How far ``model`` lies from the official weights after the steps, relative to how far
        the official training moved them from where both started."""
        apart = {}
        for network in ("generator", "discriminator"):
            mine = dict(getattr(model, network).named_parameters())
            theirs = dict(getattr(official_final, network).named_parameters())
            start = dict(getattr(official_initial, network).named_parameters())
            distance = sum(float((mine[k].detach() - theirs[k].detach()).pow(2).sum()) for k in theirs)
            moved = sum(float((theirs[k].detach() - start[k].detach()).pow(2).sum()) for k in theirs)
            apart[network] = (distance / moved) ** 0.5
        return apart

    series, drifts = {}, {}
    for variant in ("ours", "ours_official_d_loss"):
        trainer = Trainer(config, splits, run_dir / "ours-steps", log=lambda line: None, progress=False)
        official_weights_into_ours(saved["initial"]["g"], saved["initial"]["d"], trainer.model)
        trainer.model.train()
        series[variant] = []
        for step in range(args.steps):
            images = splits.train.images[step * args.batch_size : (step + 1) * args.batch_size]
            x = to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2))
            if variant == "ours":
                series[variant].append(trainer.train_step(x))
            else:
                series[variant].append(step_with_official_d_loss(trainer, x))
        drifts[variant] = drift(trainer.model)
    rows = []
    for step, theirs in enumerate(saved["losses"], start=1):
        row = {
            "step": step,
            "official": {
                "g_adv": theirs["err_g_adv"],
                "g_con": theirs["err_g_con"] / 50.0,  # its w_con (the default, 50) is in the logged term
                "g_lat": theirs["err_g_lat"],
                # the official D loss also holds the latent term: its adversarial part alone
                "d_adv": theirs["err_d"] - theirs["err_g_lat"],
            },
        }
        for variant, values in series.items():
            mine = values[step - 1]
            row[variant] = {
                "g_adv": mine["g_adv"],
                "g_con": mine["g_con"],
                "g_lat": mine["g_lat"],
                "d_adv": mine["d"],
            }
        rows.append(row)
    return {"steps": rows, "weights_apart_over_moved": drifts}


def step_with_official_d_loss(trainer, x) -> dict[str, float]:
    """Our training step with one change, to test where the two codes part: the discriminator's
    loss is the official one, Eq. 1 plus w_lat * L_lat (D also pulls f(x) and f(x_hat) together),
    where ours is Eq. 1 alone. Everything else is our step (``Trainer.train_step``)."""
    from skipganomaly.models.objective import (
        contextual_loss,
        discriminator_loss,
        generator_adversarial_loss,
        latent_loss,
    )

    model, weights = trainer.model, trainer.weights
    x_hat = model.generator(x)
    logit_real, features_real = model.discriminator(x)
    logit_fake, features_fake = model.discriminator(x_hat)
    adversarial = generator_adversarial_loss(logit_fake)
    contextual = contextual_loss(x, x_hat)
    latent = latent_loss(features_real, features_fake)
    generator = weights.adversarial * adversarial + weights.contextual * contextual + weights.latent * latent
    adversarial_d = discriminator_loss(logit_real, logit_fake)
    for opt in trainer.optimizers.values():
        opt.zero_grad(set_to_none=True)
    params = trainer._params
    generator.backward(inputs=params["generator"], retain_graph=True)
    (adversarial_d + weights.latent * latent).backward(inputs=params["discriminator"])
    for opt in trainer.optimizers.values():
        opt.step()
    return {
        "g_adv": adversarial.item(),
        "g_con": contextual.item(),
        "g_lat": latent.item(),
        "d": adversarial_d.item(),
    }


def print_steps(args, batches: Path, work: Path, tag: str) -> int:
    shown = sorted({1, 2, 5, 10, 20, 50, 100, 200, 500, args.steps} & set(range(1, args.steps + 1)))
    results = {}
    for name in args.classes:
        compared = compare_steps(args, batches, name, work / "steps" / f"{name}-{tag}")
        results[name] = compared
        print(
            f"\n{name}: the first {args.steps} steps from the same initial weights on the same batches; "
            "each cell: official / ours / ours with the official D loss"
        )
        terms = ("g_adv", "g_con", "g_lat", "d_adv")
        print(f"{'step':>5} " + " ".join(f"{term:^26}" for term in terms))
        for row in compared["steps"]:
            if row["step"] in shown:
                cells = " ".join(
                    "/".join(f"{row[side][t]:.4f}" for side in ("official", "ours", "ours_official_d_loss"))
                    for t in terms
                )
                print(f"{row['step']:>5} {cells}")
        for variant, label in (("ours", "ours"), ("ours_official_d_loss", "ours with the official D loss")):
            drift = compared["weights_apart_over_moved"][variant]
            print(
                f"after {args.steps} steps, {label}: weights apart from the official ones by "
                f"{drift['generator']:.3f} (G) and {drift['discriminator']:.3f} (D) of the distance the official "
                "training moved them"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"settings": vars(args), "steps": results}, indent=2, default=str) + "\n"
        )
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="checkout of samet-akcay/skip-ganomaly (patched)")
    parser.add_argument("--official-python", default=sys.executable, help="interpreter with torchvision")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10: python batches or class folders")
    parser.add_argument("--classes", nargs="+", default=["automobile", "bird", "cat"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--ndf", type=int, default=16)
    parser.add_argument("--nz", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="training seed of both sides")
    parser.add_argument("--order-seed", type=int, default=0, help="image order of converted class folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", choices=["both", "official", "ours"], default="both")
    parser.add_argument("--work", type=Path, help="where batches and runs are kept (default: cache/fidelity)")
    parser.add_argument("--fresh", action="store_true", help="retrain even where a complete run exists")
    parser.add_argument(
        "--cross-score",
        action="store_true",
        help="also score the official code's saved weights with our paper protocol (same weights)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="instead of training: compare the first N steps from the same initial weights",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    if args.official is None or not (args.official / "train.py").is_file():
        print(f"skipped: no official checkout (--official {args.official}; it needs train.py)")
        return 0
    if args.data_root is None or not args.data_root.exists():
        print(f"skipped: no CIFAR-10 data (--data-root {args.data_root})")
        return 0
    unknown = [c for c in args.classes if c not in CLASS_NAMES]
    if unknown:
        parser.error(f"unknown classes {unknown}; choose from {', '.join(CLASS_NAMES)}")
    if args.sides != "ours":
        probe = subprocess.run(
            [args.official_python, "-c", "import torch, torchvision; print(torch.__version__)"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            print(
                f"--official-python {args.official_python} cannot import torch and torchvision",
                file=sys.stderr,
            )
            return 2
        official_torch = probe.stdout.strip()
    work = args.work or cache_root() / "fidelity"
    work.mkdir(parents=True, exist_ok=True)
    batches = resolve_batches(args.data_root, work, args.order_seed)
    if batches is None:
        print(
            f"skipped: {args.data_root} holds neither cifar-10-batches-py nor train/ and test/ class folders"
        )
        return 0

    tag = f"e{args.epochs}-ngf{args.ngf}-ndf{args.ndf}-nz{args.nz}-b{args.batch_size}-s{args.seed}"
    tag += f"-order{args.order_seed}"
    if args.steps:
        return print_steps(args, batches, work, tag)
    results: dict[str, dict] = {}
    for name in args.classes:
        print(f"{name}:", flush=True)
        results[name] = {}
        if args.sides in ("both", "official"):
            results[name]["official"] = run_official(
                args, batches, name, work / "runs" / f"official-{name}-{tag}"
            )
        if args.sides in ("both", "ours"):
            results[name]["ours"] = run_ours(args, batches, name, work / "runs" / f"ours-{name}-{tag}")
        if args.cross_score and "official" in results[name]:
            official_dir = work / "runs" / f"official-{name}-{tag}"
            results[name]["same_weights"] = cross_score(
                args,
                batches,
                name,
                official_dir,
                results[name]["official"],
                work / "runs" / f"ours-{name}-{tag}",
            )

    print(
        f"\nCIFAR-10, {args.epochs} epoch(s), ngf {args.ngf}, ndf {args.ndf}, nz {args.nz}, batch "
        f"{args.batch_size}, seed {args.seed}, lr 2e-4, w_con 50 (reference preset); data {batches}"
    )
    if args.sides != "ours":
        print(f"official code on torch {official_torch}; ours on torch {__import__('torch').__version__}")
    print(f"{'class':<11} {'epoch':>5} {'official':>9} {'ours paper':>10} {'diff':>7} {'ours honest':>11}")
    for name, sides in results.items():
        for epoch in range(args.epochs):
            official = sides.get("official", {}).get("paper_auroc", [None] * args.epochs)[epoch]
            ours = sides.get("ours", {})
            paper = ours.get("paper_auroc", [None] * args.epochs)[epoch]
            honest = ours.get("honest_test_auroc", [None] * args.epochs)[epoch]

            def cell(value, width, sign=""):
                return f"{value:>{sign}{width}.3f}" if value is not None else f"{'-':>{width}}"

            diff = paper - official if paper is not None and official is not None else None
            print(
                f"{name:<11} {epoch + 1:>5} {cell(official, 9)} {cell(paper, 10)} {cell(diff, 7, '+')} "
                f"{cell(honest, 11)}"
            )
    if args.cross_score:
        print(
            "\nThe same weights scored both ways (paper protocol set, order and batches; train-mode BatchNorm), "
            "and each term alone (AUROC; its mean over the normal images)"
        )
        print(
            f"{'class':<11} {'weights':<9} {'epoch':>5} {'reported':>9} {'squared R':>10} {'L1 R (ours)':>11} "
            f"{'R squared':>15} {'R L1':>15} {'L':>15}"
        )
        for name, sides in results.items():
            for row in sides.get("same_weights", []):
                terms = " ".join(
                    f"{row[f'auroc_{k}']:>6.3f} ({row[f'mean_normal_{k}']:.4f})"
                    for k in ("r_squared", "r_l1", "latent")
                )
                print(
                    f"{name:<11} {row['weights']:<9} {row['epoch']:>5} {row['reported']:>9.3f} "
                    f"{row['scored_squared']:>10.4f} {row['scored_l1']:>11.4f} {terms}"
                )
    for name, sides in results.items():
        seconds = ", ".join(
            f"{side} {values['seconds']:.0f} s" for side, values in sides.items() if isinstance(values, dict)
        )
        print(f"{name}: training and scoring time {seconds}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": vars(args) | {"batches": str(batches)}, "results": results},
                indent=2,
                default=str,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

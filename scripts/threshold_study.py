"""How well normal-only's threshold holds on test, with and without a shift of the test images.

normal-only fixes its threshold at a quantile (``eval.threshold_quantile``, 0.95) of the anomaly
scores of held-out *training* normals: it promises a false-positive rate of 1 - q on normal images
like those. This script measures what that promise gives on test, beside val-split's rule (the
F1-best cut on a labelled validation split), for the *same* model, on the *same* test images:

1. the normal-only run's checkpoint scores its held-out normals, and the two halves of the
   evaluation pool that val-split would use (``data.val_fraction``, ``data.split_seed``): the
   labelled validation half (val-split's rule chooses its threshold there) and the test half
   (every rule is measured there);
2. threshold rules: quantiles of the held-out normals' scores (0.90, 0.95, 0.99 and their max),
   val-split's F1-best cut on the labelled validation half, and, as an OPTIMISTIC bound, the
   F1-best cut on the test half itself;
3. each rule's precision, recall, F1 and false-positive rate on the test half's normals; then the
   same with every test image shifted (brighter, darker, less contrast) after the threshold was
   fixed, as a camera or lighting change after deployment would; and the threshold recalibrated
   at the same quantile on 100 known-good images taken after the shift.

With ``--val-split RUN`` it also prints that separately trained val-split run's own figures (its
own model and threshold: what ``reproduce --protocols val-split normal-only`` reports side by side).

    .venv/bin/python scripts/threshold_study.py --run runs/digits-normal-only-0 \
        --val-split runs/digits-val-split-0

Needs runs of in-memory data sets (digits, MNIST, CIFAR-10; the shifts edit the uint8 arrays).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from skipganomaly.data import prepare_data
from skipganomaly.data.base import ImageSet
from skipganomaly.formats.checkpoint import load_run_checkpoint
from skipganomaly.scoring.engine import ScoringOptions, score_set
from skipganomaly.scoring.metrics import auroc, best_f1_threshold, false_positive_rate, precision_recall_f1

QUANTILES = (0.90, 0.95, 0.99)
DEFAULT_SHIFTS = ("brightness+4", "brightness-4", "brightness+12", "contrast0.9")
RECALIBRATION_IMAGES = 100


def parse_shift(text: str):
    """``brightness+N`` / ``brightness-N`` (grey levels added) or ``contrastF`` (deviations from
    each image's mean scaled by F) -> a function of float images (N, H, W, C)."""
    if text.startswith("brightness"):
        delta = float(text[len("brightness") :])
        return lambda x: x + delta
    if text.startswith("contrast"):
        factor = float(text[len("contrast") :])

        def contrast(x):
            mean = x.mean(axis=(1, 2, 3), keepdims=True)
            return (x - mean) * factor + mean

        return contrast
    raise SystemExit(f"--shifts {text!r}: use brightness+N, brightness-N or contrastF")


def shifted(image_set: ImageSet, shift: str) -> ImageSet:
    """A copy of an in-memory set with every image transformed (rounded, clipped to 0..255)."""
    if shift == "none":
        return image_set
    if image_set.images is None:
        raise SystemExit("the shifts need an in-memory data set (digits, MNIST, CIFAR-10)")
    images = image_set.images.astype(np.float64)
    images = np.clip(np.rint(parse_shift(shift)(images)), 0, 255).astype(np.uint8)
    return dataclasses.replace(image_set, images=images)


def at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    out = precision_recall_f1(labels, scores, threshold)
    out["fpr"] = false_positive_rate(labels, scores, threshold)
    return out


def study(run: Path, shifts: tuple[str, ...] = DEFAULT_SHIFTS, device: str = "cpu") -> dict:
    checkpoint = load_run_checkpoint(run, "best")
    config = checkpoint.config
    if config.data.protocol != "normal-only":
        raise SystemExit(f"{run} was trained with {config.data.protocol}; give a normal-only run")
    normal_only = prepare_data(config.data)
    halves = prepare_data(dataclasses.replace(config.data, protocol="val-split"))
    model = checkpoint.build_model().to(device)
    options = ScoringOptions.for_run(config, normal_only.channels, torch.device(device), None, "normal-only")
    held_out = score_set(model, normal_only.val, options).score
    val = score_set(model, halves.val, options)
    rules = {f"q{q:.2f} of held-out normals": float(np.quantile(held_out, q)) for q in QUANTILES}
    rules["max of held-out normals"] = float(np.max(held_out))
    rules["val-split rule: F1-best on labelled validation"] = best_f1_threshold(val.labels, val.score)[1]
    # Recalibration: known-good images drawn at random (seeded) from the validation half, taken
    # after the shift (a deployment's own normal images), give the threshold at the same quantile.
    # Drawn, not the first ones: class-folder pools come class after class.
    normals = np.flatnonzero(halves.val.labels == 0)
    picked = np.random.default_rng(0).choice(normals, min(RECALIBRATION_IMAGES, len(normals)), replace=False)
    calibration = np.sort(picked)
    results = {}
    for shift in ("none", *shifts):
        test = score_set(model, shifted(halves.test, shift), options)
        row = {name: at(test.labels, test.score, t) for name, t in rules.items()}
        good = score_set(model, shifted(halves.val.subset(calibration), shift), options).score
        recalibrated = f"q0.95 of {len(good)} normals taken after the shift (recalibration)"
        row[recalibrated] = at(test.labels, test.score, float(np.quantile(good, 0.95)))
        row["OPTIMISTIC: F1-best on test itself"] = at(
            test.labels, test.score, best_f1_threshold(test.labels, test.score)[1]
        )
        normal = test.labels == 0
        results[shift] = {
            "auroc": auroc(test.labels, test.score),
            "median_test_normal_over_held_out": float(np.median(test.score[normal]) / np.median(held_out)),
            "rules": row,
        }
    info = normal_only.info
    return {
        "run": str(run),
        "data": f"{info.dataset}, abnormal {', '.join(info.abnormal_classes)}",
        "held_out_normals": int(len(held_out)),
        "test_half": halves.test.label_counts(),
        "median_val_normal_over_held_out": float(np.median(val.score[val.labels == 0]) / np.median(held_out)),
        "shifts": results,
    }


def val_split_figures(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    fpr = test.get("fpr")
    if fpr is None:  # a run folder written before metrics.json had fpr: from scores.csv
        import csv

        rows = [r for r in csv.DictReader((run / "scores.csv").open()) if r["split"] == "test"]
        labels = np.array([int(r["label"]) for r in rows])
        scores = np.array([float(r["score"]) for r in rows])
        fpr = false_positive_rate(labels, scores, test["threshold"])
    return {
        "auroc": test["auroc"],
        "precision": test["precision"],
        "recall": test["recall"],
        "f1": test["f1"],
        "fpr": fpr,
    }


def markdown(result: dict, val_split: dict | None) -> str:
    lines = [
        f"### {result['data']} ({result['run']})",
        "",
        f"Held-out normals: {result['held_out_normals']}; test half: {result['test_half']['normal']} normal, "
        f"{result['test_half']['abnormal']} abnormal. Median score of the validation half's normals over the "
        f"held-out normals' median: {result['median_val_normal_over_held_out']:.3f}.",
        "",
        "| test images | threshold rule | precision | recall | F1 | FPR on test normals |",
        "|---|---|---|---|---|---|",
    ]
    for shift, entry in result["shifts"].items():
        label = f"{shift} (AUROC {entry['auroc']:.3f}; normal median x{entry['median_test_normal_over_held_out']:.2f})"
        for rule, m in entry["rules"].items():
            lines.append(
                f"| {label} | {rule} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['fpr']:.3f} |"
            )
            label = ""
    if val_split:
        lines += [
            "",
            f"Separately trained val-split run (its own model and threshold, its own test split): AUROC "
            f"{val_split['auroc']:.3f}, precision {val_split['precision']:.3f}, recall {val_split['recall']:.3f}, "
            f"F1 {val_split['f1']:.3f}, FPR {val_split['fpr']:.3f}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a normal-only run folder")
    parser.add_argument("--val-split", type=Path, help="a val-split run of the same data, to print beside")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--shifts",
        nargs="*",
        default=list(DEFAULT_SHIFTS),
        help="shifts of the test images: brightness+N, brightness-N, contrastF (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = study(args.run, tuple(args.shifts), args.device)
    other = val_split_figures(args.val_split) if args.val_split else None
    print(markdown(result, other))
    if args.json:
        args.json.write_text(json.dumps({"normal_only": result, "val_split": other}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

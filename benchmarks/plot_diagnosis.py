"""Figures of docs/diagnosis.md from the runs of benchmarks/diagnose.py.

    python benchmarks/plot_diagnosis.py --runs DIAG_DIR --output docs/images

DIAG_DIR holds run folders named like ``digits-0-t0``, ``cifar-bird-t1``, ``mvtec-t1``,
``digits-0-ref15`` and ``digits-0-bn15`` (the commands are in docs/diagnosis.md); a figure
whose runs are missing is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def records(run: Path) -> list[dict]:
    path = run / "diagnosis.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve(recs: list[dict], weights: str, split: str, key: str) -> list[float]:
    return [r[weights][split].get(key, float("nan")) for r in recs if weights in r]


def terms_figure(runs: dict[str, list[dict]], out: Path) -> None:
    """Validation AUROC per epoch of each score term, one panel per data set."""
    panels = [(name, recs) for name, recs in runs.items() if recs]
    if not panels:
        print("terms figure: no runs")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    terms = [
        ("R", "R (Eq. 2, mean)"),
        ("R_top5", "R, top 5% of pixels"),
        ("L", "L (Eq. 3)"),
        ("knn_f", "kNN in D's features"),
        ("ROT", "rotation task"),
        ("knn_pix", "kNN on 8x8 pixels (control)"),
    ]
    for ax, (name, recs) in zip(axes[0], panels, strict=True):
        epochs = [r["epoch"] for r in recs]
        for key, label in terms:
            values = curve(recs, "ema", "val", key)
            if all(v != v for v in values):  # all NaN: not computed in this run
                continue
            style = ":" if key == "knn_pix" else "-"
            ax.plot(epochs, values, style, marker="o", ms=3, label=label)
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0.0, 1.0)
    axes[0][0].set_ylabel("validation AUROC (averaged weights)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def average_figure(recs: list[dict], title: str, out: Path) -> None:
    """Validation AUROC of the paper's score per epoch: live weights against their average."""
    if not recs:
        print(f"{out.name}: no run")
        return
    epochs = [r["epoch"] for r in recs]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for weights, label in (("live", "live weights"), ("ema", "averaged weights (EMA 0.999)")):
        ax.plot(epochs, curve(recs, weights, "val", "A"), marker="o", ms=3, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUROC, Eq. 5")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def shortcut_figure(runs: dict[str, list[dict]], out: Path) -> None:
    """Mean reconstruction error of normal and abnormal validation images per epoch."""
    panels = [(name, recs) for name, recs in runs.items() if recs]
    if not panels:
        print("shortcut figure: no runs")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, recs) in zip(axes[0], panels, strict=True):
        epochs = [r["epoch"] for r in recs]
        ax.plot(epochs, curve(recs, "ema", "val", "R_normal"), marker="o", ms=3, label="normal")
        ax.plot(epochs, curve(recs, "ema", "val", "R_abnormal"), marker="o", ms=3, label="abnormal")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("mean |x - G(x)|")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def batchnorm_figure(recs: list[dict], out: Path) -> None:
    """Validation AUROC with BatchNorm's running statistics against statistics re-estimated on
    training batches at the same weights."""
    if not recs or "live_recal" not in recs[0]:
        print(f"{out.name}: no run with re-estimated statistics")
        return
    epochs = [r["epoch"] for r in recs]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for weights, label in (("live", "running statistics"), ("live_recal", "re-estimated on 50 batches")):
        ax.plot(epochs, curve(recs, weights, "val", "A"), marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUROC, Eq. 5")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("digits, 0 abnormal: BatchNorm statistics", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    load = {p.name: records(p) for p in args.runs.iterdir() if p.is_dir()}
    terms_figure(
        {
            "digits, 0 abnormal": load.get("digits-0-t1", []),
            "CIFAR-10, bird abnormal": load.get("cifar-bird-t1", []),
            "CIFAR-10, automobile abnormal": load.get("cifar-automobile-t1", []),
            "MVTec AD bottle": load.get("mvtec-t1", []),
        },
        args.output / "diagnosis-terms.png",
    )
    average_figure(
        load.get("digits-0-ref15", []),
        "digits, 0 abnormal, reference preset, 15 epochs",
        args.output / "diagnosis-average.png",
    )
    shortcut_figure(
        {
            "digits, 0 abnormal": load.get("digits-0-t0", []),
            "CIFAR-10, bird abnormal": load.get("cifar-bird-t0", []),
            "CIFAR-10, automobile abnormal": load.get("cifar-automobile-t0", []),
            "MVTec AD bottle": load.get("mvtec-t0", []),
        },
        args.output / "diagnosis-reconstruction.png",
    )
    batchnorm_figure(load.get("digits-0-bn15", []), args.output / "diagnosis-batchnorm.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare score formulas on the per-epoch, per-image score terms that diagnose.py dumped.

Training is the same whatever the score, so every formula here is what a run with that score
would have reported: each formula's validation AUROC is computed every epoch, the epoch is chosen
on validation (val-split), and the test AUROC of that epoch is reported, with the standard
deviation of validation AUROC over the last five epochs (steadiness). Terms are standardised on
the normal validation images of the same epoch, as the trainer does.

    python benchmarks/combine_scores.py RUN_DIR [RUN_DIR ...] [--weights live ema]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from skipganomaly.scoring.decisions import choose_terms, fit_term_statistics, standardize_terms
from skipganomaly.scoring.engine import ScoredSet
from skipganomaly.scoring.metrics import auroc

# name -> the standardised terms summed; a single raw term is the term alone.
FORMULAS: dict[str, tuple[str, ...]] = {
    "paper A": ("A",),
    "R": ("R",),
    "R top 5%": ("R_top5",),
    "L": ("L",),
    "knn": ("knn_f",),
    "rotation": ("ROT",),
    "pixel knn (control)": ("knn_pix",),
    "R+L": ("R", "L"),
    "R+knn": ("R", "knn_f"),
    "Rtop5+knn": ("R_top5", "knn_f"),
    "R+L+knn": ("R", "L", "knn_f"),
    "R+rot": ("R", "ROT"),
    "knn+rot": ("knn_f", "ROT"),
    "R+knn+rot": ("R", "knn_f", "ROT"),
    "R+L+knn+rot": ("R", "L", "knn_f", "ROT"),
    "Rtop5+knn+rot": ("R_top5", "knn_f", "ROT"),
}


# name -> the terms of which validation chooses the subset to sum each epoch, as the trainer does
# with model.select_terms (skipganomaly.scoring.decisions.choose_terms).
CHOSEN: dict[str, tuple[str, ...]] = {
    "chosen of R,L,knn,rot": ("R", "L", "knn_f", "ROT"),
    "chosen of R,L,knn": ("R", "L", "knn_f"),
    "chosen of R,L,rot": ("R", "L", "ROT"),
    "chosen of R,L": ("R", "L"),
}


def chosen_scores(
    epoch: dict[str, np.ndarray], terms: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Validation and test scores of the subset of ``terms`` that validation chooses."""
    if any(f"{split}/{t}" not in epoch for split in ("val", "test") for t in terms):
        return None

    def scored(split: str) -> ScoredSet:
        n = len(epoch[f"{split}/_labels"])
        blank = np.zeros(n)
        return ScoredSet(
            score=blank,
            reconstruction=blank,
            latent=blank,
            labels=epoch[f"{split}/_labels"],
            indices=np.arange(n),
            terms={t: epoch[f"{split}/{t}"].astype(np.float64) for t in terms},
        )

    val, test = scored("val"), scored("test")
    mean, std = fit_term_statistics(val)
    weights = choose_terms(val, mean, std)
    return standardize_terms(val, mean, std, weights), standardize_terms(test, mean, std, weights)


def load_epochs(run: Path, weights: str) -> list[dict[str, np.ndarray]]:
    files = sorted(run.glob(f"scores-{weights}-e*.npz"), key=lambda p: int(re.findall(r"e(\d+)", p.name)[-1]))
    return [dict(np.load(f)) for f in files]


def formula_scores(epoch: dict[str, np.ndarray], split: str, terms: tuple[str, ...]) -> np.ndarray | None:
    if any(f"{split}/{t}" not in epoch for t in terms):
        return None
    if len(terms) == 1:
        return epoch[f"{split}/{terms[0]}"].astype(np.float64)
    normal = epoch["val/_labels"] == 0
    total = np.zeros(len(epoch[f"{split}/_labels"]))
    for t in terms:
        ref = epoch[f"val/{t}"][normal].astype(np.float64)
        total += (epoch[f"{split}/{t}"] - ref.mean()) / max(ref.std(), 1e-12)
    return total


def evaluate(
    epochs: list[dict[str, np.ndarray]], terms: tuple[str, ...], chosen: bool = False
) -> dict | None:
    val_curve, test_curve = [], []
    for epoch in epochs:
        if chosen:
            both = chosen_scores(epoch, terms)
            v, t = both if both is not None else (None, None)
        else:
            v = formula_scores(epoch, "val", terms)
            t = formula_scores(epoch, "test", terms)
        if v is None or t is None:
            return None
        val_curve.append(auroc(epoch["val/_labels"], v))
        test_curve.append(auroc(epoch["test/_labels"], t))
    best = int(np.nanargmax(val_curve))
    last = val_curve[-5:]
    return {
        "val": val_curve[best],
        "test": test_curve[best],
        "epoch": best + 1,
        "steadiness": float(np.std(last)) if len(last) > 1 else float("nan"),
        "val_curve": val_curve,
        "test_curve": test_curve,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--weights", nargs="+", default=["live", "ema"])
    parser.add_argument("--json", type=Path, help="write every figure as JSON")
    args = parser.parse_args()
    results: dict = {}
    for run in args.runs:
        for weights in args.weights:
            epochs = load_epochs(run, weights)
            if not epochs:
                continue
            for name, terms, chosen in [
                *((n, t, False) for n, t in FORMULAS.items()),
                *((n, t, True) for n, t in CHOSEN.items()),
            ]:
                r = evaluate(epochs, terms, chosen)
                if r is not None:
                    results.setdefault(name, {}).setdefault(weights, {})[run.name] = r
    runs = [r.name for r in args.runs]
    header = (
        f"{'formula':<22} {'weights':<5} " + " ".join(f"{n[:18]:>18}" for n in runs) + "   mean val / test"
    )
    print(header)
    for name, by_weights in results.items():
        for weights, by_run in by_weights.items():
            cells = []
            vals, tests = [], []
            for run in runs:
                r = by_run.get(run)
                if r is None:
                    cells.append(f"{'-':>18}")
                    continue
                cells.append(
                    f"{r['val']:.3f}/{r['test']:.3f} e{r['epoch']:<2} s{r['steadiness']:.2f}"[:18].rjust(18)
                )
                vals.append(r["val"])
                tests.append(r["test"])
            mean = f"{np.mean(vals):.3f} / {np.mean(tests):.3f}" if vals else "-"
            print(f"{name:<22} {weights:<5} " + " ".join(cells) + f"   {mean}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

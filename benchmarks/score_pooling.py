"""How should R pool the anomaly map, and would the synthetic validation know?

Reads one finished run at its selected epoch (its best checkpoint and its data, as ``config.yaml``
says) and prints, for each score term alone and for the standardised sum of every term with R
pooled as the mean of its map's highest pixels (a fraction of them, over the raw map and over
the map smoothed as ``model.map_smoothing`` would), two AUROCs:

* on the run's synthetic validation (the normal validation images against each family of
  ``eval.synthetic_family``, the worst family, and each family's): what a label-free choice sees;
* on test (reported, never used to choose).

It also prints the maximum of the standardised terms in place of their sum, a combination rule
the synthetic validation could choose too, and the sum without each term in turn (R pooled as
the run chose): what each term adds, on both figures. docs/normal-only.md#pooling-r-and-the-maps-baseline
reports it::

    python benchmarks/score_pooling.py runs/bottle-0 [--json figures.json]
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from run_readback import STANDARDISED_TERMS, read_back, write_json

from skipganomaly.data.synthetic import normal_images, run_synthetic_anomalies
from skipganomaly.models.objective import gaussian_smoothing
from skipganomaly.scoring.decisions import group_aurocs
from skipganomaly.scoring.engine import ScoringOptions, score_set
from skipganomaly.scoring.metrics import auroc

FRACTIONS = (1.0, 0.1, 0.01, 0.001)
SMOOTHINGS = (0.0, 0.01)
PARTS = ("normal", "synthetic", "test")


def pooled(maps: torch.Tensor, fraction: float) -> np.ndarray:
    flat = maps.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1).numpy().astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    run = read_back(__doc__, argv, requires=STANDARDISED_TERMS)
    if run is None:
        return 0
    args, checkpoint, config, model, splits = run.args, run.checkpoint, run.config, run.model, run.splits
    size = config.data.image_size
    normal = normal_images(splits.val)
    synthetic = run_synthetic_anomalies(config, splits)
    # The raw |x - G(x)|: neither the head's map nor a smoothing or baseline the run chose.
    if model.segmentation is not None:
        model.set_map_weights(torch.tensor([1.0, 0.0]))
    if getattr(model, "map_radius", 0):
        model.set_map_smoothing(0.0)
    if "mean" in getattr(model, "map_baseline_candidates", ()):
        model.set_map_baseline(None)
    options = ScoringOptions.for_run(config, splits.channels, torch.device("cpu"), None).replace(details=True)
    scored = {
        "normal": score_set(model, normal, options),
        "synthetic": score_set(model, synthetic.images, options),
        "test": score_set(model, splits.test, options),
    }
    families = synthetic.family_of(scored["synthetic"].indices)
    labels = np.concatenate([np.zeros(len(scored["normal"].score)), np.ones(len(families))])
    groups = np.concatenate([np.full(len(scored["normal"].score), ""), families])
    radius = min(size - 1, math.ceil(3 * max(SMOOTHINGS) * size))
    variants: dict[str, dict[str, np.ndarray]] = {}
    for smoothing in SMOOTHINGS:
        for fraction in FRACTIONS:
            name = f"R top {fraction:g}" + (f", smoothed {smoothing:g}" if smoothing else "")
            variants[name] = {}
            for part in PARTS:
                maps = torch.from_numpy(scored[part].anomaly_maps.astype(np.float32))
                if smoothing:
                    maps = gaussian_smoothing(maps, torch.tensor(smoothing * size), radius)
                variants[name][part] = pooled(maps, fraction)
    out: dict[str, dict] = {"run": args.run, "epoch": checkpoint.epoch, "rows": {}}

    def row(name: str, values: dict[str, np.ndarray]) -> None:
        both = np.concatenate([values["normal"], values["synthetic"]])
        by_family = group_aurocs(labels, both, groups)
        figures = {
            "synthetic_worst": min(by_family.values()),
            "synthetic_by_family": by_family,
            "test": auroc(scored["test"].labels, values["test"]),
        }
        out["rows"][name] = figures
        families_text = " ".join(f"{k} {v:.3f}" for k, v in by_family.items())
        print(f"  {name:44} {figures['synthetic_worst']:.4f} ({families_text})   test {figures['test']:.4f}")

    print(
        f"{args.run}, epoch {checkpoint.epoch}: synthetic validation AUROC, worst family (each family) "
        "and test AUROC"
    )
    terms = list(scored["test"].terms)
    for term in terms:
        row(f"term {term}", {part: scored[part].terms[term] for part in PARTS})
    for name, values in variants.items():
        row(name, values)

    def standardized(variant: str | None) -> dict[str, np.ndarray]:
        """Each term standardised on the normal validation images, R pooled as ``variant``."""
        result = {}
        for term in terms:
            values = {
                part: variants[variant][part]
                if term == "reconstruction" and variant
                else scored[part].terms[term]
                for part in PARTS
            }
            mean, std = values["normal"].mean(), max(values["normal"].std(), 1e-8)
            result[term] = {part: (values[part] - mean) / std for part in PARTS}
        return result

    for rule in ("sum", "max"):
        for variant in variants:
            z = standardized(variant)
            combine = np.sum if rule == "sum" else np.max
            row(
                f"{rule} of terms, {variant}",
                {p: combine(np.stack([z[t][p] for t in terms]), 0) for p in PARTS},
            )
    # Each term's share: the sum without it, R pooled as the run chose (an ablation read back).
    chosen = f"R top {model.pooling_fraction():g}" if hasattr(model, "pooling_fraction") else "R top 1"
    z = standardized(chosen)
    for left_out in terms:
        kept = [t for t in terms if t != left_out]
        row(
            f"sum without {left_out}, {chosen}",
            {p: np.sum(np.stack([z[t][p] for t in kept]), 0) for p in PARTS},
        )
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

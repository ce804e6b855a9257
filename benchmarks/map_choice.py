"""Which map would another synthetic validation choose, and does that map find real defects?

Reads one finished run (its best checkpoint and data, as ``config.yaml`` says), rebuilds its
synthetic validation with ``--family`` and ``--blob-scale`` (by default the run's own), redoes
the run's label-free choice of map on those anomalies' masks exactly as training does
(:meth:`~skipganomaly.training.validation.Validation.choose_map_on`: the run's map sources,
smoothings and baselines), and prints the choice, the synthetic pixel AUROC of every candidate,
the run's image score on that synthetic validation (each family's AUROC against the normal
validation images, and the worst, the figure training selects on; with the run's own family and
scale, the figure its history holds for the selected epoch), and the test pixel AUROC and AUPRO
of the chosen map (reported, never used to choose). Runs trained otherwise but split alike (one
seed) can so be compared on one synthetic validation, without labels.
docs/normal-only.md#the-blobs-scale-and-a-bent-family reports it on four runs with real masks::

    python benchmarks/map_choice.py runs/bottle-0 --family warp --blob-scale image [--json F.json]
"""

from __future__ import annotations

import sys

import torch
from run_readback import read_back, write_json

from skipganomaly.data.synthetic import normal_images, run_synthetic_anomalies
from skipganomaly.scoring.decisions import group_aurocs, synthetic_scored_set
from skipganomaly.scoring.engine import ScoringOptions, pixel_metrics, score_set
from skipganomaly.training.validation import Validation


def main(argv: list[str] | None = None) -> int:
    run = read_back(__doc__, argv, synthetic=True)
    if run is None:
        return 0
    args, checkpoint, config, model, splits = run.args, run.checkpoint, run.config, run.model, run.splits
    cpu = torch.device("cpu")
    options = ScoringOptions.for_run(config, splits.channels, cpu, None)
    synthetic = run_synthetic_anomalies(config, splits)
    local = synthetic.map_choosers(config.eval.synthetic_map_blobs)  # as validation chooses
    validation = Validation(config, splits, cpu, None, None, model)
    record = validation.choose_map_on(model, synthetic.images.subset(local), synthetic.masks[local], options)
    anomalies = score_set(model, synthetic.images, options)
    scored = synthetic_scored_set(
        score_set(model, normal_images(splits.val), options),
        anomalies,
        synthetic.family_of(anomalies.indices),
    )
    by_family = group_aurocs(scored.labels, scored.score, scored.groups)
    test = pixel_metrics(model, splits.test, options)
    out = {
        "run": args.run,
        "epoch": checkpoint.epoch,
        "synthetic_family": config.eval.synthetic_family,
        "blob_scale": config.train.blob_scale,
        "map_blobs": config.eval.synthetic_map_blobs,
        "choice": {key: record[key] for key in ("map", "map_smoothing", "map_baseline")},
        "synthetic_pixel_auroc": record["pixel_auroc"],
        "synthetic_auroc": {"worst": min(by_family.values()), "by_family": by_family},
        "test": test,
    }
    baseline = " less the normal mean" if record["map_baseline"] == "mean" else ""
    print(
        f"{args.run}, epoch {checkpoint.epoch}, synthetic {config.eval.synthetic_family} (blobs at "
        f"{config.train.blob_scale} scale, map chosen on {len(local)} local anomalies, "
        f"{config.eval.synthetic_map_blobs}): chose {record['map']} "
        f"smoothed {record['map_smoothing']:g}{baseline}"
    )
    for key, value in sorted(record["pixel_auroc"].items(), key=lambda item: -item[1]):
        print(f"  synthetic pixel AUROC {value:.4f}  {key}")
    families = ", ".join(f"{name} {value:.4f}" for name, value in by_family.items())
    print(f"  synthetic image AUROC of the run's score {min(by_family.values()):.4f} (worst; {families})")
    if test is None:
        print("  test: no masks")
    else:
        print(
            f"  test pixel AUROC of the choice {test['pixel_auroc']:.4f}, AUPRO {test.get('aupro', float('nan')):.4f}"
        )
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

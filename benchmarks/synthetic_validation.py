"""How well does the synthetic validation stand in for labelled anomalies? (issue: normal-only)

Trains one run with labelled validation (``--protocol val-split``) while also scoring the
synthetic validation every epoch (``eval.selection_metric=synthetic``), and prints, per epoch,
for each rule that combines the score's terms, the AUROC on the synthetic validation and on the
LABELLED validation split (never test). A rule that the synthetic figure ranks like the labelled
one can be trusted under ``normal-only``; the comparison is what docs/accuracy.md reports.

    python benchmarks/synthetic_validation.py --config digits-quick --set train.preset=restoring
    python benchmarks/synthetic_validation.py --config paper-cifar10 --data-root ../shared/data/cifar10-jpeg75.tar.gz \
        --set train.preset=restoring model.ngf=16 model.ndf=16 --epochs 8

Every subset of the score's terms is scored each epoch (``--json`` keeps them all, with each
family's AUROC, so that any set of families can be judged afterwards from one run); the rules
printed are ``chosen`` (the subset with the best synthetic AUROC, what training does), ``all``
(every term, standardised and summed), each term alone, and ``chosen+knn``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile

import numpy as np

from skipganomaly.scoring.decisions import (
    choose_terms,
    fit_term_statistics,
    standardize_terms,
    worst_group_auroc,
)
from skipganomaly.scoring.metrics import auroc
from skipganomaly.specs.bundled_configs import find_config
from skipganomaly.specs.config import build_config, load_yaml, parse_override
from skipganomaly.training.runs import train_run


def rule_values(row: dict) -> dict[str, tuple[float, float]]:
    """(synthetic, labelled val) AUROC of each rule at one epoch: ``chosen`` (what training
    does), ``all`` terms, each term alone, and ``chosen+knn`` (the best synthetic subset that
    keeps the knn term)."""
    subsets, names = row["subsets"], row["terms"]
    out = {"chosen": subsets[row["chosen"]], "all": subsets["+".join(names)]}
    for name in names:
        out[name] = subsets[name]
    with_knn = [k for k in subsets if "knn" in k.split("+")]
    if with_knn:
        best = max(with_knn, key=lambda k: (subsets[k]["synthetic"], len(k.split("+"))))
        out["chosen+knn"] = subsets[best]
    return {rule: (v["synthetic"], v["labelled_val"]) for rule, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits-quick")
    parser.add_argument("--data-root")
    parser.add_argument("--set", nargs="*", default=[])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--json", help="write the per-epoch table here")
    args = parser.parse_args()
    tree = load_yaml(find_config(args.config))
    for text in args.set:
        key, value = parse_override(text)
        section, name = key.split(".", 1)
        tree.setdefault(section, {})[name] = value
    tree.setdefault("data", {})["protocol"] = "val-split"
    tree.setdefault("eval", {})["selection_metric"] = "synthetic"
    if args.data_root:
        tree["data"]["root"] = args.data_root
    if args.epochs:
        tree.setdefault("train", {})["epochs"] = args.epochs
    config = build_config(tree)
    table = []

    def each_epoch(trainer, epoch):
        validation = trainer.validation
        synthetic, val = validation.synthetic_scores, validation.last_val
        mean, std = fit_term_statistics(val)
        names = list(val.terms)
        labelled = val.labels >= 0
        row = {"epoch": epoch, "terms": names, "subsets": {}}
        for mask in range(1, 2 ** len(names)):
            weights = np.array([(mask >> i) & 1 for i in range(len(names))], float)
            key = "+".join(n for n, w in zip(names, weights, strict=True) if w)
            scores = standardize_terms(synthetic, mean, std, weights)
            normal = synthetic.labels == 0
            by_family = {
                family: auroc(
                    synthetic.labels[normal | (synthetic.groups == family)],
                    scores[normal | (synthetic.groups == family)],
                )
                for family in sorted(set(synthetic.groups[~normal].tolist()))
            }
            row["subsets"][key] = {
                "synthetic": worst_group_auroc(synthetic.labels, scores, synthetic.groups),
                "by_family": by_family,
                "labelled_val": auroc(
                    val.labels[labelled], standardize_terms(val, mean, std, weights)[labelled]
                ),
            }
        chosen = choose_terms(synthetic, mean, std)
        row["chosen"] = "+".join(n for n, w in zip(names, chosen, strict=True) if w)
        table.append(row)
        cells = "  ".join(f"{rule} {value[0]:.3f}/{value[1]:.3f}" for rule, value in rule_values(row).items())
        print(f"epoch {epoch}: synthetic/labelled-val AUROC  {cells}  (chosen: {row['chosen']})", flush=True)

    with tempfile.TemporaryDirectory() as run_dir:

        def ready(trainer):
            trainer.callbacks.append(each_epoch)

        train_run(config, run_dir, on_ready=ready, log=lambda line: None, progress=False)
    # Over epochs: does the synthetic figure rank the subsets as the labelled one does?
    agree = []
    for row in table:
        values = list(row["subsets"].values())
        agree += [
            (a["synthetic"] > b["synthetic"]) == (a["labelled_val"] > b["labelled_val"])
            for a, b in itertools.combinations(values, 2)
        ]
    print(
        f"pairwise rank agreement of the term subsets, synthetic vs labelled validation: {np.mean(agree):.2f}"
    )
    for rule in rule_values(table[0]):
        values = np.array([rule_values(row)[rule] for row in table])
        pick = int(np.argmax(values[:, 0]))
        print(
            f"rule {rule}: epoch chosen on synthetic {table[pick]['epoch']}, labelled val AUROC there "
            f"{values[pick, 1]:.3f} (best over epochs {values[:, 1].max():.3f})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

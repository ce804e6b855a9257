"""The paper protocol's AUROC of one run's weights in several orders of the evaluation pool.

Train-mode BatchNorm (the official code's scoring) normalises each batch by its own statistics,
so the order of the evaluation set is part of the result. This scores the run's last checkpoint
over its evaluation pool (read again from --data-root, e.g. a class-folder CIFAR-10 copy) in three
orders with train-mode BatchNorm (batches of 64, as the official code), and once in eval mode
(the honest scoring). docs/fidelity-check.md has the figures.

    python benchmarks/paper_orders.py RUN_DIR --data-root /path/to/cifar10
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from skipganomaly.data import prepare_data
from skipganomaly.data.base import official_evaluation_order
from skipganomaly.formats.checkpoint import load_checkpoint
from skipganomaly.scoring.engine import ScoringOptions, score_set
from skipganomaly.scoring.metrics import auroc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (its checkpoints/last.pt and its data settings)")
    parser.add_argument("--data-root", help="where the run's data set is here (default: as trained)")
    args = parser.parse_args()
    checkpoint = load_checkpoint(f"{args.run}/checkpoints/last.pt")
    model = checkpoint.build_model()
    data = checkpoint.config.data
    if args.data_root:
        data = dataclasses.replace(data, root=args.data_root)
    pool = prepare_data(data).pool
    orders = {
        "class after class (the old order)": np.argsort(pool.labels, kind="stable"),
        "the official rule (normal classes mixed)": official_evaluation_order(pool, False, 0),
        "everything shuffled": np.random.default_rng(0).permutation(len(pool)),
    }
    channels = int(checkpoint.model_args["channels"])
    options = ScoringOptions(data.image_size, channels, batch_size=64, device=torch.device("cpu"))
    for name, order in orders.items():
        scored = score_set(model, pool.subset(order), options.replace(batchnorm_train=True))
        print(f"train-mode BatchNorm, {name}: AUROC {auroc(scored.labels, scored.score):.3f}")
    scored = score_set(model, pool, options.replace(batch_size=256))
    print(f"eval-mode BatchNorm (honest scoring): AUROC {auroc(scored.labels, scored.score):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

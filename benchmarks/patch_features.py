"""Does the patch term need D's trained features? Region features against a bank of normal regions.

Reads one finished run at its selected epoch (its best checkpoint and its data, as
``config.yaml`` says) and scores its images with the patch term's nearest-region distance
(``skipganomaly.models.patch_knn``: the highest distance of an image's regions to a bank of
``model.patch_bank`` regions drawn from the normal training images; the map, its distances
upsampled and smoothed as the run smooths), on four kinds of region features:

* ``D trained``: the run's discriminator, as the patch term uses it;
* ``D at initialisation``: the same network with fresh DCGAN weights (seed 0): what the
  architecture alone gives, the control for what adversarial training adds;
* ``pixels``: the image averaged over 4 x 4 blocks, each with its 3 x 3 neighbours (27 values
  for RGB): no network at all;
* ``G's encoder``: the run's generator's encoder after its second and third blocks (1/4 and 1/8
  of the side, as D's), through the LeakyReLU the next block would apply, each averaged over its
  3 x 3 neighbours, the coarser upsampled: a generator taught to restore, as feature extractor.

For each it prints the synthetic validation's AUROC (worst family: what a label-free choice
sees), the test AUROC and, where test has masks, the test pixel AUROC (reported, never used to
choose). docs/normal-only.md#the-patch-term reports it::

    python benchmarks/patch_features.py runs/bottle-1 [--json figures.json]
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
import torch.nn.functional as F
from run_readback import read_back, write_json

from skipganomaly.data.loading import iterate_batches, to_model_input
from skipganomaly.data.synthetic import normal_images, run_synthetic_anomalies
from skipganomaly.models.blocks import init_weights
from skipganomaly.models.patch_knn import PATCH_BLOCKS, nearest_patch_distance, patch_map, sample_bank
from skipganomaly.scoring.decisions import worst_group_auroc
from skipganomaly.scoring.engine import pixel_masks
from skipganomaly.scoring.metrics import auroc, pixel_auroc


def pixel_regions(x: torch.Tensor) -> torch.Tensor:
    """The image's own values as region features, at the patch term's grid (1/4 of the side)."""
    blocks = F.avg_pool2d(x, 4)
    h, w = blocks.shape[-2:]
    return F.unfold(blocks, 3, padding=1).view(x.shape[0], -1, h, w)


def generator_regions(model):
    """The features of ``G's encoder`` (module docstring) for ``model``'s UNet generator."""

    def features_of(x: torch.Tensor) -> torch.Tensor:
        taken, h = [], x
        for block_index, block in enumerate(model.generator.down[: max(PATCH_BLOCKS)]):
            h = block(h)
            if block_index + 1 in PATCH_BLOCKS:
                taken.append(
                    F.avg_pool2d(F.leaky_relu(h, 0.2), 3, stride=1, padding=1, count_include_pad=False)
                )
        size = taken[0].shape[-2:]
        upsampled = [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taken[1:]]
        return torch.cat([taken[0], *upsampled], dim=1)

    return features_of


@torch.inference_mode()
def region_scores(features_of, bank_images, parts, rows: int, seed: int, model, size: int):
    """Each part's image scores (highest region distance) and maps, with a bank drawn from
    ``bank_images``' regions."""
    bank = sample_bank(torch.cat([features_of(x) for x in bank_images]), rows, seed)
    centre = bank.mean(0)
    scores, maps = {}, {}
    for name, batches in parts.items():
        distances = torch.cat(
            [nearest_patch_distance(features_of(x), bank - centre, centre) for x in batches]
        )
        scores[name] = distances.flatten(1).amax(1).numpy().astype(np.float64)
        maps[name] = model.smooth_map(patch_map(distances, size)).numpy()
    return scores, maps


def main(argv: list[str] | None = None) -> int:
    run = read_back(
        __doc__,
        argv,
        requires=(lambda model: hasattr(model, "patch_bank"), "has no patch term (model.score_terms)"),
    )
    if run is None:
        return 0
    args, checkpoint, config, model, splits = run.args, run.checkpoint, run.config, run.model, run.splits
    size, seed = config.data.image_size, config.train.seed
    synthetic = run_synthetic_anomalies(config, splits)
    sets = {"normal": normal_images(splits.val), "synthetic": synthetic.images, "test": splits.test}

    def batches(image_set):
        found = list(iterate_batches(image_set, 32, image_size=size, channels=splits.channels))
        return [to_model_input(b.images) for b in found], np.concatenate([b.indices.numpy() for b in found])

    loaded = {name: batches(image_set) for name, image_set in sets.items()}
    parts = {name: value[0] for name, value in loaded.items()}
    order = {name: value[1] for name, value in loaded.items()}
    pick = np.random.default_rng(seed).choice(
        len(splits.train), min(len(splits.train), config.model.knn_bank), replace=False
    )
    bank_images, _ = batches(splits.train.subset(np.sort(pick)))
    fresh = copy.deepcopy(model)
    torch.manual_seed(0)
    init_weights(fresh.discriminator)
    features = {
        "D trained": model.patch_features_of,
        "D at initialisation": fresh.patch_features_of,
        "pixels": pixel_regions,
        "G's encoder": generator_regions(model),
    }
    families = synthetic.family_of(order["synthetic"])
    labels = np.r_[np.zeros(len(order["normal"])), np.ones(len(families))]
    groups = np.r_[np.full(len(order["normal"]), ""), families]
    test_labels = splits.test.labels[order["test"]]
    keep, masks = pixel_masks(splits.test, size)
    position = {index: i for i, index in enumerate(order["test"])}
    rows = model.patch_bank.shape[0]
    out: dict[str, dict] = {"run": args.run, "epoch": checkpoint.epoch, "bank_rows": rows, "rows": {}}
    print(
        f"{args.run}, epoch {checkpoint.epoch}, bank of {rows} regions: synthetic (worst family), test, test pixel AUROC"
    )
    for name, features_of in features.items():
        scores, maps = region_scores(features_of, bank_images, parts, rows, seed, model, size)
        figures = {
            "synthetic_worst": worst_group_auroc(
                labels, np.r_[scores["normal"], scores["synthetic"]], groups
            ),
            "test": auroc(test_labels, scores["test"]),
        }
        if masks.any():
            figures["test_pixel"] = pixel_auroc(masks, maps["test"][[position[i] for i in keep]])
        out["rows"][name] = figures
        pixel = f"   pixel {figures['test_pixel']:.4f}" if "test_pixel" in figures else ""
        print(f"  {name:22} synthetic {figures['synthetic_worst']:.4f}   test {figures['test']:.4f}{pixel}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

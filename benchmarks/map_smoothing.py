"""Which smoothing of the anomaly map finds real defects, and does the synthetic validation know?

Reads one finished run (its best checkpoint and its data, as ``config.yaml`` says) and prints,
for each map (|x − G(x)|, the segmentation head's and the patch term's where the model has them) and each Gaussian
smoothing (a fraction of the image side, ``model.map_smoothing``), the pixel AUROC and AUPRO:

* on the labelled validation split, when the run's protocol has one with masks (``val-split``):
  what a labelled choice sees;
* on the test split (reported, never used to choose);
* on the run's synthetic validation anomalies (its ``eval.synthetic_family``, the local ones):
  what a label-free choice sees (``--family`` and ``--blob-scale`` ask what another synthetic
  validation would have seen: docs/normal-only.md#the-blobs-scale-and-a-bent-family).

On every part it adds the pixel AUROC of the map less the validation normals' mean map (the
residual: what the map says of this image beyond where maps are usually high; on labelled
validation and on the synthetic anomalies, made of those same normal images, it is a little
optimistic), and on test the location control (that mean map, smoothed alike, given to every
image: what the map knows of where defects usually are); for each part also the image AUROC of
each map's peak (its highest pixel), to show whether the map could score images. docs/normal-only.md#smoothing-the-map reports it on two sets of real defects::

    python benchmarks/map_smoothing.py runs/tire-val-split [--json figures.json]
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from run_readback import read_back, write_json

from skipganomaly.data.base import ImageSet
from skipganomaly.data.synthetic import normal_images, run_synthetic_anomalies
from skipganomaly.models.objective import gaussian_smoothing
from skipganomaly.scoring.engine import ScoringOptions, pixel_masks
from skipganomaly.scoring.metrics import aupro, auroc, pixel_auroc
from skipganomaly.training.validation import raw_source_maps

SMOOTHINGS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08)


def figures(
    model, images: ImageSet, masks: np.ndarray, labels: np.ndarray, options, normal_maps=None
) -> dict[str, dict]:
    """Each map's and smoothing's figures; with ``normal_maps`` (other images' raw maps by source)
    also the location control: their mean, smoothed alike, given to every image."""
    maps, indices = raw_source_maps(model, images, options)
    masks, labels = masks[indices], labels[indices]
    size = masks.shape[-1]
    radius = min(size - 1, math.ceil(3 * max(SMOOTHINGS) * size))
    result = {}
    for source, raw in maps.items():
        for smoothing in SMOOTHINGS:
            smoothed = gaussian_smoothing(raw, torch.tensor(smoothing * size), radius) if smoothing else raw
            smoothed = smoothed.numpy()
            row = {"pixel_auroc": pixel_auroc(masks, smoothed), "aupro": aupro(masks, smoothed)}
            if normal_maps is not None:
                mean = normal_maps[source].mean(0, keepdim=True)
                mean = (
                    gaussian_smoothing(mean, torch.tensor(smoothing * size), radius) if smoothing else mean
                )[0]
                row["location_control"] = pixel_auroc(masks, np.broadcast_to(mean.numpy(), masks.shape))
                # The map less that mean: what it says about this image beyond where maps are high.
                row["residual_pixel_auroc"] = pixel_auroc(masks, smoothed - mean.numpy())
            if len(set(labels.tolist())) == 2:
                row["peak_image_auroc"] = auroc(labels, smoothed.reshape(len(smoothed), -1).max(1))
            result[f"{source}@{smoothing:g}"] = row
    return result


def main(argv: list[str] | None = None) -> int:
    run = read_back(__doc__, argv, synthetic=True)
    if run is None:
        return 0
    args, checkpoint, config, model, splits = run.args, run.checkpoint, run.config, run.model, run.splits
    size = config.data.image_size
    options = ScoringOptions.for_run(config, splits.channels, torch.device("cpu"), None).replace(details=True)
    parts = {"test": splits.test}
    if splits.val.labels is not None and splits.val is not splits.test and (splits.val.labels == 1).any():
        parts = {"val": splits.val, "test": splits.test}
    out: dict[str, dict] = {
        "run": args.run,
        "epoch": checkpoint.epoch,
        "family": config.eval.synthetic_family,
    }
    normal = normal_images(splits.val)
    normal_maps, _ = raw_source_maps(model, normal, options)
    for name, images in parts.items():
        keep, masks = pixel_masks(images, size)
        if masks.any():
            out[name] = figures(model, images.subset(keep), masks, images.labels[keep], options, normal_maps)
    synthetic = run_synthetic_anomalies(config, splits)
    local = np.flatnonzero(synthetic.masks.mean((1, 2)) < 0.5)  # a whole-image anomaly has no pixel to find
    out["synthetic"] = figures(
        model, synthetic.images.subset(local), synthetic.masks[local], np.ones(len(local), np.int64), options,
        normal_maps,
    )  # fmt: skip
    print(
        f"{args.run}, epoch {checkpoint.epoch}, synthetic {config.eval.synthetic_family} "
        f"(blobs at {config.train.blob_scale} scale): pixel AUROC / AUPRO (image AUROC of the map's peak) "
        "[test: the location control's pixel AUROC, and the map less the control's map]"
    )
    for key in out["synthetic"]:
        cells = []
        for part in ("val", "test", "synthetic"):
            if part in out:
                row = out[part][key]
                peak = f" ({row['peak_image_auroc']:.3f})" if "peak_image_auroc" in row else ""
                control = f" [residual {row['residual_pixel_auroc']:.4f}]"
                if part == "test":
                    control = f" [{row['location_control']:.4f}, residual {row['residual_pixel_auroc']:.4f}]"
                cells.append(f"{part} {row['pixel_auroc']:.4f} / {row['aupro']:.4f}{peak}{control}")
        print(f"  {key:22} " + "   ".join(cells))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

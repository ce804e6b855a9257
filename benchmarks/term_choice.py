"""Could anything without labels choose the score's terms? Two probes, read back on one run.

Under ``normal-only`` every term counts (``eval.synthetic_choose_terms=false``), because the
synthetic validation's local families rate the reconstruction error and the segmentation head
first, and on digits those miss real anomalies (docs/normal-only.md). This benchmark asks whether
another held-out family, or a correction of the terms, would let a label-free rule choose them.
It reads one finished run at its selected epoch and prints, for each term alone and for the
standardised sum of every term (the model's own standardisation; the model's score where every
term counts, as under ``normal-only``), the AUROC of the normal validation images against each
candidate family, and test AUROC (reported, never used to choose):

* the package's held-out families (``stain``, ``shuffle``, ``chimera``, ``warp``, blobs at the
  run's ``train.blob_scale``) and three whole-image probes defined here, not offered as
  families: ``overlay`` (two normal validation images at 35% to 65% each, a double exposure: a
  semantic anomaly made of normal images), ``overlay-matched`` (the same, rescaled to the first
  image's mean and standard deviation per channel, so that it is not fainter than a normal
  image) and ``bend`` (the whole image bent by a smooth flow of 6% to 12% of the side: a new
  shape in the image's own colours); the package's families share up to 128 anomalies each (at
  most four copies of each normal image in all, as the synthetic validation draws them), each
  probe damages every normal validation image once;
* for each set of families in :data:`FAMILY_SETS`, the subset of terms with the highest worst
  family AUROC (what ``eval.synthetic_choose_terms=true`` would pick on those families) and its
  test AUROC;
* the complexity residual: each term less its linear dependence on the image's log mean gradient,
  log intensity std and mean intensity, fitted on the normal validation images (the terms rank
  images by complexity, hypothesis 1 of docs/diagnosis.md; Serra et al., ICLR 2020, correct a
  likelihood for it), summed as the model sums, on every family and on test.

docs/normal-only.md#choosing-the-terms-without-labels reports it::

    python benchmarks/term_choice.py runs/bottle-0 [--json figures.json]
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch
import torch.nn.functional as F
from run_readback import STANDARDISED_TERMS, read_back, write_json

from skipganomaly.data.base import ImageSet
from skipganomaly.data.loading import iterate_batches, to_model_input
from skipganomaly.data.synthetic import normal_images, synthetic_anomalies
from skipganomaly.scoring.decisions import group_aurocs
from skipganomaly.scoring.engine import ScoringOptions, score_set
from skipganomaly.scoring.metrics import auroc
from skipganomaly.scoring.shortcuts import image_statistics

PACKAGE_FAMILIES = ("stain", "shuffle", "chimera", "warp")
PROBES = ("overlay", "overlay-matched", "bend")
FAMILY_SETS = (
    ("stain", "shuffle"),
    ("stain", "shuffle", "chimera"),
    ("stain", "shuffle", "warp"),
    ("stain", "shuffle", "overlay"),
    ("stain", "shuffle", "overlay-matched"),
    ("stain", "shuffle", "bend"),
)
PARTS = ("normal", "anomalies", "test")


def overlay(x: torch.Tensor, generator: torch.Generator, matched: bool) -> torch.Tensor:
    """Each image over another of the batch (half the batch away) at 35% to 65%; ``matched``
    rescales the result to the first image's mean and std per channel."""
    n = x.shape[0]
    other = x.roll(max(1, n // 2), dims=0) if n > 1 else x.flip(3)
    share = 0.35 + 0.3 * torch.rand((n, 1, 1, 1), generator=generator)
    out = (1 - share) * x + share * other
    if matched:
        mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
        out_mean, out_std = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True).clamp_min(1e-6)
        out = (out - out_mean) / out_std * std + mean
    return out.clamp(-1, 1)


def bend(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The whole image moved by a smooth random flow (3 x 3 control points, bicubic) whose largest
    shift is 6% to 12% of the side."""
    n, _, h, w = x.shape
    flow = 2 * torch.rand((n, 2, 3, 3), generator=generator) - 1
    flow = F.interpolate(flow, size=(h, w), mode="bicubic", align_corners=True)
    flow = flow / flow.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    amplitude = 2 * (0.06 + 0.06 * torch.rand((n, 1, 1, 1), generator=generator))
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    base = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)
    moved = base + (amplitude * flow).permute(0, 2, 3, 1)
    return F.grid_sample(x, moved, mode="bilinear", padding_mode="border", align_corners=True)


def probe_set(normal: ImageSet, probe: str, seed: int, config, channels: int) -> ImageSet:
    """The normal validation images damaged by ``probe``, as uint8 images at the model's size."""
    generator = torch.Generator().manual_seed(seed)
    damaged = []
    for batch in iterate_batches(
        normal, 128, image_size=config.data.image_size, channels=channels,
        max_pixels=config.data.max_image_pixels, skip_bad=True,
    ):  # fmt: skip
        x = to_model_input(batch.images)
        out = bend(x, generator) if probe == "bend" else overlay(x, generator, probe == "overlay-matched")
        damaged.append(
            ((out + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
    images = np.concatenate(damaged)
    return ImageSet(
        class_ids=np.full(len(images), -1),
        images=images,
        labels=np.ones(len(images), dtype=np.int64),
        ids=[f"probe:{probe}:{i}" for i in range(len(images))],
    )


def statistics_of(images: ImageSet, indices: np.ndarray, config, channels: int) -> np.ndarray:
    """(N, 3): log mean gradient, log intensity std and mean intensity / 255 of the images, in
    the order of ``indices`` (a scored set's)."""
    rows = {}
    for batch in iterate_batches(
        images, 256, image_size=config.data.image_size, channels=channels,
        max_pixels=config.data.max_image_pixels, skip_bad=True,
    ):  # fmt: skip
        stats = image_statistics(batch.images.numpy().transpose(0, 2, 3, 1))
        for i, index in enumerate(batch.indices.tolist()):
            rows[index] = (
                np.log(stats["gradient"][i] + 1e-3),
                np.log(stats["std"][i] + 1e-3),
                stats["mean"][i] / 255,
            )
    return np.array([rows[i] for i in indices.tolist()])


def main(argv: list[str] | None = None) -> int:
    run = read_back(__doc__, argv, requires=STANDARDISED_TERMS)
    if run is None:
        return 0
    args, checkpoint, config, model, splits = run.args, run.checkpoint, run.config, run.model, run.splits
    seed, channels = config.train.seed, splits.channels
    normal = normal_images(splits.val)
    package = synthetic_anomalies(
        normal, PACKAGE_FAMILIES, len(PACKAGE_FAMILIES) * 128, seed, image_size=config.data.image_size,
        channels=channels, max_pixels=config.data.max_image_pixels, scale=config.train.blob_scale,
    )  # fmt: skip
    options = ScoringOptions.for_run(config, channels, torch.device("cpu"), None)
    sets = {"normal": normal, "anomalies": package.images, "test": splits.test}
    scored = {part: score_set(model, images, options) for part, images in sets.items()}
    families = list(package.family_of(scored["anomalies"].indices))
    stats = {part: statistics_of(sets[part], scored[part].indices, config, channels) for part in PARTS}
    terms = list(model.score_terms)
    values = {t: {part: scored[part].terms[t].astype(np.float64) for part in PARTS} for t in terms}
    for probe in PROBES:
        images = probe_set(normal, probe, seed, config, channels)
        result = score_set(model, images, options)
        families += [probe] * len(result.score)
        probe_stats = statistics_of(images, result.indices, config, channels)
        stats["anomalies"] = np.concatenate([stats["anomalies"], probe_stats])
        for t in terms:
            values[t]["anomalies"] = np.concatenate([values[t]["anomalies"], result.terms[t]])
    n_normal = len(scored["normal"].score)
    labels = np.concatenate([np.zeros(n_normal), np.ones(len(families))])
    groups = np.concatenate([np.full(n_normal, ""), np.array(families)])
    test_labels = scored["test"].labels

    def figures(score: dict[str, np.ndarray]) -> dict[str, float]:
        by_family = group_aurocs(labels, np.concatenate([score["normal"], score["anomalies"]]), groups)
        return {**by_family, "test": auroc(test_labels, score["test"])}

    # The model's standardisation (its buffers, fitted on these normal validation images).
    mean, std = model.term_mean.numpy(), model.term_std.numpy()
    z = {t: {p: (values[t][p] - mean[i]) / std[i] for p in PARTS} for i, t in enumerate(terms)}
    rows = {f"term {t}": figures(z[t]) for t in terms}
    rows["sum"] = figures({p: sum(z[t][p] for t in terms) for p in PARTS})
    subsets = {}
    for r in range(1, len(terms) + 1):
        for names in itertools.combinations(terms, r):
            subsets["+".join(names)] = figures({p: sum(z[t][p] for t in names) for p in PARTS})
    chosen = {}
    for family_set in FAMILY_SETS:
        best = max(subsets, key=lambda k: (min(subsets[k][f] for f in family_set), k.count("+")))
        chosen[",".join(family_set)] = {
            "terms": best,
            "worst": min(subsets[best][f] for f in family_set),
            "test": subsets[best]["test"],
            "sum_worst": min(rows["sum"][f] for f in family_set),
        }
    # The complexity residual: each term less its least-squares fit on the image statistics.
    design = {p: np.column_stack([np.ones(len(stats[p])), stats[p]]) for p in PARTS}
    residual = {}
    for t in terms:
        coefficients, *_ = np.linalg.lstsq(design["normal"], values[t]["normal"], rcond=None)
        left = {p: values[t][p] - design[p] @ coefficients for p in PARTS}
        scale = max(left["normal"].std(), 1e-8)
        residual[t] = {p: left[p] / scale for p in PARTS}
        rows[f"term {t}, complexity residual"] = figures(residual[t])
    rows["sum, complexity residual"] = figures({p: sum(residual[t][p] for t in terms) for p in PARTS})

    order = [*PACKAGE_FAMILIES, *PROBES, "test"]
    print(
        f"{args.run}, epoch {checkpoint.epoch}: AUROC of the normal validation images against each family; test"
    )
    print(f"  {'':40} " + " ".join(f"{name[:9]:>9}" for name in order))
    for name, row in rows.items():
        print(f"  {name:40} " + " ".join(f"{row[f]:9.3f}" for f in order))
    print(
        "terms with the highest worst-family AUROC, per set of families (eval.synthetic_choose_terms=true):"
    )
    for family_set, pick in chosen.items():
        print(
            f"  {family_set:32} {pick['terms']:50} worst {pick['worst']:.3f} (sum {pick['sum_worst']:.3f})"
            f"   test {pick['test']:.3f} (sum {rows['sum']['test']:.3f})"
        )
    write_json(
        args.json,
        {
            "run": args.run,
            "epoch": checkpoint.epoch,
            "terms": terms,
            "rows": rows,
            "chosen": chosen,
            "subsets": subsets,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

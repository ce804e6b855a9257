"""Render the README's picture: inputs, reconstructions and anomaly maps of a trained run.

Takes a run folder (by default the quick start's, ``runs/quickstart``; ``--train`` first trains it
with the quick-start command when the folder does not exist), draws a few normal and a few
abnormal images at random (seeded) from the run's own test split, scores them with the library's
:class:`~skipganomaly.deploy.predict.Predictor` exactly as ``skipganomaly predict`` would, and writes a
3-row grid: the input, the generator's reconstruction G(x) and the per-pixel anomaly map |x - G(x)|
on the run's fixed colour scale (the scale ``predict --heatmaps`` uses). Where the data set has
ground-truth masks (MVTec), their outline is drawn on the input.

    .venv/bin/python scripts/readme_figure.py --run runs/quickstart --output docs/images/quickstart-grid.png

Needs matplotlib (``pip install -e ".[dev]"`` or the ``report`` extra).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

QUICKSTART = ["train", "--config", "configs/digits-quick.yaml", "--abnormal-class", "0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="a training run folder")
    parser.add_argument("--output", type=Path, default=Path("docs/images/quickstart-grid.png"))
    parser.add_argument("--per-class", type=int, default=4, help="normal and abnormal images shown (each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of test images")
    parser.add_argument("--panel", type=float, default=1.25, help="inches per image panel")
    parser.add_argument("--dpi", type=int, default=110)
    parser.add_argument(
        "--train", action="store_true", help="train the run with the quick-start command if it is missing"
    )
    return parser.parse_args(argv)


def ensure_run(run: Path, train: bool) -> None:
    if (run / "checkpoints").is_dir():
        return
    if not train:
        sys.exit(f"{run} is not a training run; run the quick start first, or pass --train")
    command = [sys.executable, "-m", "skipganomaly", *QUICKSTART, "--output", str(run)]
    print("training:", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def test_images(
    predictor, seed: int, per_class: int
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray | None]]:
    """A seeded random choice of normal then abnormal images from the run's own test split, their
    labels, and their ground-truth masks at the model's size where the data set has them."""
    from PIL import Image

    from skipganomaly.data import prepare_data
    from skipganomaly.data.images import load_mask, prepare_image

    test = prepare_data(predictor.config.data).test
    rng = np.random.default_rng(seed)
    chosen = []
    for label in (0, 1):
        pool = np.flatnonzero(test.labels == label)
        chosen.extend(np.sort(rng.choice(pool, size=min(per_class, len(pool)), replace=False)).tolist())
    images = []
    for i in chosen:
        if test.images is not None:
            image = test.images[i]
            image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        else:
            image = Image.open(test.paths[i])
        images.append(prepare_image(image, predictor.image_size, predictor.channels))
    mask_files = [test.masks[i] if test.masks is not None else None for i in chosen]
    masks = [None if f is None else load_mask(f, predictor.image_size) for f in mask_files]
    return images, test.labels[chosen], masks


def reconstruct(predictor, images: list[np.ndarray]) -> np.ndarray:
    """G(x) as uint8 (N, H, W, C), with the scorer's input scaling ([0, 255] -> [-1, 1])."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.inference_mode():
        x_hat = predictor.model(x.to(predictor.device)).float().cpu()
    return ((x_hat.clamp(-1, 1) + 1.0) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def map_source(predictor) -> str:
    """What the run's anomaly map is: |x - G(x)|, its segmentation head's map or its patch term's
    (chosen on validation masks; skipganomaly.deploy.export.map_source)."""
    from skipganomaly.deploy.export import map_source as source

    return source(predictor.model)


# Each map source: its row's name and its colour bar's label.
MAP_NAMES = {
    "reconstruction": ("|x - G(x)|", "pixel error"),
    "segmentation": ("(segmentation head)", "anomaly probability"),
    "patch": ("(patch: D features'\ndistance to normal)", "distance to the nearest normal region"),
    "mixed": ("(mixed maps)", "anomaly value"),
}


def render(
    images,
    reconstructions,
    predictions,
    labels,
    masks,
    map_high: float,
    title: str,
    args,
    source: str,
    less_mean: bool = False,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(
        3, n, figsize=(args.panel * n + 1.3, args.panel * 3 + 1.0), squeeze=False, layout="constrained"
    )
    gray = images[0].shape[2] == 1
    mappable = None
    for col in range(n):
        prediction = predictions[col]
        kind = "abnormal" if labels[col] else "normal"
        verdict = "flagged" if prediction.is_anomalous else "passed"
        for row, picture in enumerate((images[col], reconstructions[col])):
            shown = picture[:, :, 0] if gray else picture
            axes[row, col].imshow(
                shown, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest"
            )
        mappable = axes[2, col].imshow(
            prediction.anomaly_map, cmap="inferno", vmin=0.0, vmax=map_high, interpolation="nearest"
        )
        if masks[col] is not None and masks[col].any():  # the ground truth, on the input only: the
            # map below stays unhidden, to be judged against it
            axes[0, col].contour(masks[col], levels=[0.5], colors="#00e5ff", linewidths=0.8)
        axes[0, col].set_title(
            f"{kind}\nscore {prediction.score:.2f}\n{verdict}",
            fontsize=10,
            color="#b2182b" if labels[col] else "#2166ac",
        )
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    map_name = "anomaly map\n" + MAP_NAMES[source][0]
    if less_mean:  # model.map_baseline: the normal validation images' mean map is subtracted
        map_name += "\nless normal mean"
    for row, name in enumerate(("input x", "reconstruction\nG(x)", map_name)):
        axes[row, 0].set_ylabel(name, fontsize=10)
    bar = fig.colorbar(mappable, ax=axes[2, :].tolist(), shrink=0.9, pad=0.01)
    bar.set_label(MAP_NAMES[source][1] + (" less mean" if less_mean else ""), fontsize=9)
    fig.suptitle(title, fontsize=11)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_run(args.run, args.train)
    from skipganomaly.deploy.predict import Predictor

    predictor = Predictor.from_run(args.run)
    images, labels, masks = test_images(predictor, args.seed, args.per_class)
    predictions = predictor.score_arrays(
        [image[:, :, 0] if image.shape[2] == 1 else image for image in images], with_maps=True
    )
    reconstructions = reconstruct(predictor, images)
    source = map_source(predictor)
    # The map the scorer returned must be the one this script's reconstruction gives, or the
    # picture would show something other than what the model scored (|x - G(x)| maps, smoothed
    # as the model smooths them, model.map_smoothing).
    smooth = getattr(predictor.model, "smooth_map", lambda maps: maps)
    for image, rebuilt, prediction in zip(images, reconstructions, predictions, strict=True):
        if source != "reconstruction":
            break
        own_map = np.abs(image.astype(np.float32) - rebuilt.astype(np.float32)).mean(axis=2) / 127.5
        with torch.inference_mode():
            own_map = smooth(torch.from_numpy(own_map)[None].to(predictor.device))[0].cpu().numpy()
            if float(getattr(predictor.model, "map_baseline_on", 0.0)):  # model.map_baseline
                own_map = own_map - predictor.model.map_baseline.cpu().numpy()
        gap = float(np.abs(own_map - prediction.anomaly_map).max())
        if gap > 0.02:
            raise SystemExit(f"reconstruction and scored anomaly map differ by {gap:.3f}")
    data = predictor.config.data
    if data.abnormal_class:
        setting = f"class {data.abnormal_class} abnormal"
    elif data.normal_class:
        setting = f"class {data.normal_class} normal"
    else:  # a set with its own normal and abnormal folders (MVTec, the reference layout): name it
        setting = Path(data.root).name.removesuffix(".tar.gz") if data.root else "its own split"
    setting += f", protocol {data.protocol}"
    title = (
        f"{data.dataset}, {setting} (run {args.run.name}, epoch {predictor.epoch})\n{args.per_class} random "
        f"normal and {args.per_class} random abnormal test images; flagged = score >= the run's stored "
        f"threshold {predictor.normalization.threshold:.2f}"
    )
    # The run's colour scale comes from its normal validation images' maps; a probability's is 1.
    map_high = 1.0 if source == "segmentation" else predictor.normalization.map_high
    less_mean = float(getattr(predictor.model, "map_baseline_on", 0.0)) > 0
    render(images, reconstructions, predictions, labels, masks, map_high, title, args, source, less_mean)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

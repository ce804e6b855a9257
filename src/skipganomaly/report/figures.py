"""The report's figures as PNG bytes (matplotlib, Agg canvas, no pyplot state, no display).

Fig. 4: AUROC per class with seed error bars (and Table I's values as markers for CIFAR-10);
Fig. 5: normal vs abnormal histograms of test scores; Fig. 6: t-SNE of discriminator features
f(x); Fig. 7: inputs, reconstructions and anomaly maps; ROC curves; training curves.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from ..scoring.heatmaps import colorize
from ..specs.errors import UserError

NORMAL_COLOUR = "#1f77b4"
ABNORMAL_COLOUR = "#d62728"
SERIES_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
DPI = 90


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            "reproduce draws its figures with matplotlib, which is not installed; "
            "install it with: pip install 'skipganomaly[report]'"
        ) from None


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the report names no external address anywhere, not even there.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _panel_grid(fig, n: int, max_cols: int = 5):
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return flat[:n]


def _grid_size(n: int, max_cols: int = 5, panel: float = 2.6) -> tuple[float, float]:
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    return max(4.0, panel * cols), panel * rows * 0.9 + 0.4


# --------------------------------------------------------------------------- Fig. 4
def bar_chart(
    labels: list[str],
    series: list[tuple[str, list[float | None], list[float | None]]],
    reference: list[tuple[str, list[float]]] | None = None,
    title: str = "",
) -> bytes:
    """Grouped bars: one group per class (and the mean), one bar per series with its seed
    standard deviation as an error bar; reference values (published) as black markers."""
    fig = _figure(max(7.0, 0.45 * len(labels) * max(1, len(series)) + 2.0), 4.2)
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for k, (name, means, stds) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        heights = [m if m is not None else 0.0 for m in means]
        errors = [s if s is not None else 0.0 for s in stds]
        ax.bar(x + offset, heights, width, yerr=errors, capsize=2, label=name, color=SERIES_COLOURS[k % 8])
    markers = ["D", "o", "s", "^"]
    for k, (name, values) in enumerate(reference or []):
        ax.scatter(x, values, marker=markers[k % 4], color="black", s=18, zorder=3, label=name)
    ax.set_xticks(x, labels, rotation=0 if len(labels) <= 12 else 60)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUROC")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_title(title, fontsize=10)
    # Two legend columns of about 3 inches each fit the figure's minimum width.
    fig.legend(fontsize=7, ncols=min(2, len(series) + len(reference or [])), loc="outside lower center")
    return to_png(fig)


# --------------------------------------------------------------------------- Fig. 5
def score_histograms(panels: list[tuple[str, np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """One panel per class: test scores, min-max scaled over the test set (Eq. 6), normal vs
    abnormal, as densities."""
    from ..scoring.normalization import min_max_scale

    fig = _figure(*_grid_size(len(panels)))
    for ax, (name, labels, scores) in zip(_panel_grid(fig, len(panels)), panels, strict=True):
        scaled = min_max_scale(scores) if len(scores) else scores
        bins = np.linspace(0, 1, 31)
        for label, colour, text in ((0, NORMAL_COLOUR, "normal"), (1, ABNORMAL_COLOUR, "abnormal")):
            values = scaled[labels == label]
            if len(values):
                ax.hist(values, bins=bins, density=True, alpha=0.55, color=colour, label=text)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("score (Eq. 6)", fontsize=7)
    if panels:
        fig.axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


# --------------------------------------------------------------------------- Fig. 6
def tsne_panels(panels: list[tuple[str, np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """One panel per class: the 2-D t-SNE embedding of f(x), normal vs abnormal."""
    fig = _figure(*_grid_size(len(panels)))
    for ax, (name, embedding, labels) in zip(_panel_grid(fig, len(panels)), panels, strict=True):
        for label, colour, text in ((0, NORMAL_COLOUR, "normal"), (1, ABNORMAL_COLOUR, "abnormal")):
            chosen = embedding[labels == label]
            ax.scatter(chosen[:, 0], chosen[:, 1], s=3, alpha=0.6, color=colour, label=text, linewidths=0)
        ax.set_title(f"{name} ({len(labels)} images)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if panels:
        fig.axes[0].legend(fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


# --------------------------------------------------------------------------- Fig. 7
def _rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 with C in (1, 3) -> (N, H, W, 3)."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _mosaic(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of (K, H, W, 3) uint8 tiles -> one image with white gaps."""
    k, h, w = rows[0].shape[:3]
    out = np.full((len(rows) * (h + gap) - gap, k * (w + gap) - gap, 3), 255, np.uint8)
    for r, tiles in enumerate(rows):
        for c in range(k):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[c]
    return out


def example_grid(examples: dict[str, np.ndarray], groups: tuple[str, ...], title: str = "") -> bytes:
    """For each group of test images, a block of inputs, reconstructions and anomaly maps, with
    each image's score above it.

    Maps are coloured as ``predict --heatmaps`` draws them, on the run's fixed scale (the 99th
    percentile of normal validation pixel errors mid-scale, twice it saturating).
    """
    names = examples["grid_groups"]
    present = [g for g in groups if (names == g).any()]
    map_high = float(examples.get("map_high", 0.5))
    row_names = ["input"]
    if "grid_reconstructions" in examples:
        row_names.append("reconstruction")
    if "grid_maps" in examples:
        row_names.append("anomaly map")
    per_group = max([int((names == g).sum()) for g in present] or [1])
    cols = 2 if len(present) > 1 else 1
    fig = _figure(
        cols * (0.75 * per_group + 1.2), math.ceil(len(present) / cols) * (0.75 * len(row_names) + 0.7)
    )
    for ax, group in zip(_panel_grid(fig, len(present), max_cols=cols), present, strict=True):
        idx = np.flatnonzero(names == group)
        rows = [_rgb(examples["grid_inputs"][idx])]
        if "grid_reconstructions" in examples:
            rows.append(_rgb(examples["grid_reconstructions"][idx]))
        if "grid_maps" in examples:
            rows.append(
                np.stack([colorize(m.astype(np.float32), map_high) for m in examples["grid_maps"][idx]])
            )
        mosaic = _mosaic(rows)
        ax.imshow(mosaic, interpolation="nearest")
        h, w = rows[0].shape[1:3]
        ax.set_xticks([c * (w + 2) + w / 2 for c in range(len(idx))])
        ax.set_xticklabels([f"{v:.2f}" for v in examples["grid_scores"][idx]], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks([r * (h + 2) + h / 2 for r in range(len(rows))])
        ax.set_yticklabels(row_names, fontsize=7)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel(group, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


# --------------------------------------------------------------------------- ROC
def roc_curves(panels: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]], title: str = "") -> bytes:
    """One panel per class, one curve per seed (label, test labels, test scores)."""
    from sklearn.metrics import roc_curve

    from ..scoring.metrics import auroc

    fig = _figure(*_grid_size(len(panels)))
    for ax, (name, curves) in zip(_panel_grid(fig, len(panels)), panels, strict=True):
        for k, (label, labels, scores) in enumerate(curves):
            if not ((labels == 0).any() and (labels == 1).any()):
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(
                fpr, tpr, lw=1.0, color=SERIES_COLOURS[k % 8], label=f"{label}: {auroc(labels, scores):.3f}"
            )
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


# --------------------------------------------------------------------------- training curves
def _missing(values: list[Any]) -> bool:
    return all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def auroc_curves(panels: list[tuple[str, list[dict[str, Any]]]], title: str = "") -> bytes:
    """One panel per class: validation AUROC per epoch for each seed (solid, the selected epoch
    marked), and the paper protocol's AUROC (dotted, optimistic) where it was scored. A run whose
    validation has no AUROC (normal-only: no anomalies) shows its test AUROC instead (dashed;
    reported, never used to choose), the epoch chosen on the held-out normals marked on it."""
    fig = _figure(*_grid_size(len(panels)))
    for ax, (name, runs) in zip(_panel_grid(fig, len(panels)), panels, strict=True):
        for k, run in enumerate(runs):
            colour = SERIES_COLOURS[k % 8]
            epochs = [h["epoch"] for h in run["history"]]
            val = [h["val"]["auroc"] for h in run["history"]]
            curve, style, label = val, "-", "validation"
            if _missing(val):
                curve, style, label = [h["test"]["auroc"] for h in run["history"]], "--", "test"
            if not _missing(curve):
                ax.plot(
                    epochs, curve, color=colour, lw=1.2, ls=style, marker=".", label=f"{run['label']} {label}"
                )
                best = run.get("epoch_best")
                if best in epochs:
                    ax.plot([best], [curve[epochs.index(best)]], marker="o", mfc="none", color=colour)
            paper = [(h["epoch"], h["paper"]["auroc"]) for h in run["history"] if h.get("paper")]
            if paper:
                ax.plot(
                    *zip(*paper, strict=True),
                    color=colour,
                    lw=1.0,
                    ls=":",
                    label=f"{run['label']} paper (optimistic)",
                )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1.02)
    if panels:
        fig.axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def loss_curves(runs: list[tuple[str, dict[str, list[tuple[float, float]]]]], title: str = "") -> bytes:
    """One panel per loss term, one line per run: (epoch position, value) points."""
    terms = list(dict.fromkeys(term for _, losses in runs for term in losses))
    fig = _figure(*_grid_size(len(terms), max_cols=4, panel=3.0))
    for ax, term in zip(_panel_grid(fig, len(terms), max_cols=4), terms, strict=True):
        for k, (label, losses) in enumerate(runs):
            points = losses.get(term)
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, lw=0.9, color=SERIES_COLOURS[k % 8], label=label)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=7)
        values = [v for _, losses in runs for _, v in losses.get(term, []) if v > 0]
        if values and max(values) / min(values) > 100:
            ax.set_yscale("log")
    if terms:
        fig.axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)

"""The report's figures: which runs each one shows, the data drawn, and its caption.

Three steps, kept apart: the run folders are read through :class:`~.run_files.RunFiles` (each file
once); the functions below shape what each figure shows from them and the summary; the captions
are the ``*_caption`` functions; :mod:`.figures` draws (matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..specs.models import MODEL_SPECS, display_name
from ..specs.protocols import PROTOCOL_SPECS
from . import figures
from .examples import GROUPS
from .results import column_label, column_order
from .run_files import RunFiles
from .runner import Plan, RunSpec, slug
from .summary_types import Summary


@dataclass
class Figure:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: bytes


# --------------------------------------------------------------------------- captions
def bars_caption(seeds: int, with_reference: bool) -> str:
    return (
        f"Mean test AUROC over {seeds} seed(s) per class and overall; error bars: standard deviation over "
        "seeds (none with one seed)." + (" Black markers: the paper's Table I." if with_reference else "")
    )


def histograms_caption(where: str) -> str:
    return f"Histograms of the anomaly score (Eq. 5) of the {where}, min-max scaled over that set (Eq. 6)."


def tsne_title(model: str) -> str:
    spec = MODEL_SPECS.get(model)
    return "Fig. 6: t-SNE of " + (spec.feature_title if spec else "the scoring features")


def tsne_caption(model: str, where: str) -> str:
    spec = MODEL_SPECS.get(model)
    features = spec.feature_name if spec else "the features the model scores with"
    return f"t-SNE (scikit-learn) of {features} of up to 1,000 randomly subsampled images of the {where}."


def examples_caption(where: str) -> str:
    return (
        f"Test images ({where}) with their reconstructions and anomaly maps |x - x_hat| (colour: 0 to "
        "twice the 99th percentile of normal validation pixel errors); numbers are deployment scores "
        "(1 = the most anomalous normal validation image). Typical images are drawn at random."
    )


def roc_caption(protocol: str) -> str:
    return f"ROC curves of the {PROTOCOL_SPECS[protocol].title} test split, one per seed (legend: AUROC)."


AUROC_CURVES_CAPTION = (
    "Validation AUROC after each epoch (circle: the epoch selected); dotted: the paper protocol's "
    "AUROC on the whole evaluation pool (OPTIMISTIC; its best epoch is what the paper rows report)."
)
NORMAL_ONLY_CURVES_CAPTION = (
    "normal-only: validation holds held-out normal images only, so it has no AUROC; dashed: the test "
    "AUROC after each epoch (reported, never used to choose; circle: the epoch chosen on the held-out "
    "normals' mean anomaly score, lower is better)."
)


def curves_caption(protocol: str) -> str:
    spec = PROTOCOL_SPECS[protocol]
    if spec.validation == "normal hold-out":
        return f"{spec.title}: " + NORMAL_ONLY_CURVES_CAPTION
    return f"{spec.title}: " + AUROC_CURVES_CAPTION


def losses_caption(seed: int) -> str:
    return (
        f"Losses logged during training (seed {seed}), per class: g = generator total, d = discriminator, "
        "and the generator's terms (for Skip-GANomaly g_adv, g_con of Eq. 2 and g_lat of Eq. 3; Eq. 4 "
        "weights them into g)."
    )


# --------------------------------------------------------------------------- which runs
def featured_runs(plan: Plan, model: str) -> list[RunSpec]:
    """The runs figures show per class: the first seed, the first training protocol."""
    protocol = plan.runs[0].protocol
    seed = plan.runs[0].seed
    return [s for s in plan.runs if s.model == model and s.seed == seed and s.protocol == protocol]


def panel_name(plan: Plan, spec: RunSpec) -> str:
    label = column_label(plan, spec.class_name)
    if spec.class_name is None:
        return label
    return f"{'normal' if plan.options.one_class else 'abnormal'}: {label}"


def runs_by_class(plan: Plan, model: str, protocol: str) -> list[tuple[str, list[RunSpec]]]:
    """(panel name, the seeds' runs) per class in table order, for one model and protocol."""
    by_class: dict[str | None, list[RunSpec]] = {}
    for spec in plan.runs:
        if spec.model == model and spec.protocol == protocol:
            by_class.setdefault(spec.class_name, []).append(spec)
    return [(panel_name(plan, by_class[c][0]), by_class[c]) for c in column_order(plan) if by_class.get(c)]


# --------------------------------------------------------------------------- the figures
def auroc_bars(summary: Summary) -> Figure:
    """Fig. 4: bars with seed error bars, every model and protocol, Table I's values as markers."""
    classes = summary["classes"]
    series = []
    for model, by_protocol in summary["table"].items():
        for protocol, entry in by_protocol.items():
            means = [entry["per_class"][c]["mean"] for c in classes] + [entry["overall"]["mean"]]
            stds = [entry["per_class"][c]["std"] for c in classes] + [entry["overall"]["std"]]
            series.append((f"{display_name(model)}, {PROTOCOL_SPECS[protocol].title}", means, stds))
    reference = []
    published = summary["published"]
    if published:
        for model in summary["models"]:
            row = published["rows"].get(model)
            if row:
                reference.append(
                    (f"{row['label']}, published", [row["per_class"][c] for c in classes] + [row["mean"]])
                )
    return Figure(
        "fig4_auroc_bars",
        "Fig. 4: AUROC per class",
        bars_caption(len(summary["seeds"]), bool(reference)),
        figures.bar_chart([*classes, "mean"], series, reference),
    )


def model_figures(plan: Plan, model: str, runs: dict[Path, RunFiles], many: bool) -> list[Figure]:
    """Figs. 5-7, ROC curves and training curves of one model."""
    featured = [runs[s.run_dir] for s in featured_runs(plan, model)]
    prefix = f"{display_name(model)}: " if many else ""
    tag = f"_{model}" if many else ""
    protocol, seed = featured[0].spec.protocol, featured[0].spec.seed
    where = f"{PROTOCOL_SPECS[protocol].title} test split, seed {seed}"
    out = [
        Figure(
            f"fig5_histograms{tag}",
            f"{prefix}Fig. 5: normal vs abnormal scores",
            histograms_caption(where),
            figures.score_histograms(
                [
                    (panel_name(plan, r.spec), r.test_scores["label"], r.test_scores["raw_score"])
                    for r in featured
                ]
            ),
        )
    ]
    tsne = [
        (panel_name(plan, r.spec), r.tsne, r.examples["tsne_labels"]) for r in featured if r.tsne is not None
    ]
    if tsne:
        out.append(
            Figure(
                f"fig6_tsne{tag}",
                prefix + tsne_title(model),
                tsne_caption(model, where),
                figures.tsne_panels(tsne),
            )
        )
    for r in featured:
        if r.examples is None or not len(r.examples["grid_groups"]):
            continue
        out.append(
            Figure(
                f"fig7_examples{tag}_{slug(column_label(plan, r.spec.class_name))}",
                f"{prefix}Fig. 7: examples, {panel_name(plan, r.spec)}",
                examples_caption(where),
                figures.example_grid(r.examples, GROUPS),
            )
        )
    classes = runs_by_class(plan, model, protocol)
    curves = []
    # The per-epoch AUROC curves of every training protocol (steadiness, and normal-only beside
    # val-split); the first protocol's figure keeps its name.
    for k, trained in enumerate(dict.fromkeys(s.protocol for s in plan.runs if s.model == model)):
        panels = [
            (
                name,
                [
                    {
                        "label": f"seed {s.seed}",
                        "history": runs[s.run_dir].metrics["history"],
                        "epoch_best": runs[s.run_dir].metrics["epoch_best"],
                    }
                    for s in specs
                ],
            )
            for name, specs in runs_by_class(plan, model, trained)
        ]
        suffix = "" if k == 0 else f"_{slug(trained)}"
        what = "Validation AUROC per epoch" if k == 0 else f"AUROC per epoch, {PROTOCOL_SPECS[trained].title}"
        curves.append(
            Figure(
                f"training_auroc{tag}{suffix}",
                f"{prefix}{what}",
                curves_caption(trained),
                figures.auroc_curves(panels),
            )
        )
    roc_panels = [
        (
            name,
            [
                (
                    f"seed {s.seed}",
                    runs[s.run_dir].test_scores["label"],
                    runs[s.run_dir].test_scores["raw_score"],
                )
                for s in specs
            ],
        )
        for name, specs in classes
    ]
    loss_runs = [(column_label(plan, r.spec.class_name), r.losses) for r in featured]
    out += [
        Figure(
            f"roc_curves{tag}", f"{prefix}ROC curves", roc_caption(protocol), figures.roc_curves(roc_panels)
        ),
        *curves,
        Figure(
            f"training_losses{tag}",
            f"{prefix}Training losses",
            losses_caption(seed),
            figures.loss_curves(loss_runs),
        ),
    ]
    return out


def build_figures(plan: Plan, summary: Summary, runs: dict[Path, RunFiles]) -> list[Figure]:
    """Every figure of the report, in order: Fig. 4, then each model's."""
    many = len(summary["models"]) > 1
    out = [auroc_bars(summary)]
    for model in summary["models"]:
        out += model_figures(plan, model, runs, many)
    return out

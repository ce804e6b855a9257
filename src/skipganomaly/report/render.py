"""Write the report of a reproduction: ``results.csv``, ``summary.json``, figures, ``report.md``
and a self-contained ``report.html`` (inline CSS, figures embedded as base64 PNG; no script, no
stylesheet, font or image fetched from anywhere, no external address at all).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..files import write_bytes, write_json, write_text
from . import figures, published
from .examples import GROUPS, load_run_examples, read_test_scores, run_tsne
from .results import collect_rows, column_label, column_order, results_csv, summarize
from .runner import Plan, RunSpec, slug

# What the features returned by each model's score(details=True) are (Fig. 6 shows them).
FEATURE_NAMES = {
    "skipganomaly": "f(x), the last convolutional features of the discriminator (Eq. 3),",
    "ganomaly": "the latent code z = G_E(x),",
    "egbad": "the latent code z = E(x),",
    "anogan": "the latent code z found by the test-time search,",
}
DISPLAY_NAMES = {
    "skipganomaly": "Skip-GANomaly",
    "ganomaly": "GANomaly",
    "egbad": "EGBAD",
    "anogan": "AnoGAN",
}
PROTOCOL_TITLES = {
    "val-split": "val-split (honest)",
    "normal-only": "normal-only (honest)",
    "paper": "paper protocol (OPTIMISTIC)",
}


def display_name(model: str) -> str:
    return DISPLAY_NAMES.get(model, model)


@dataclass
class Figure:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: bytes


@dataclass
class Report:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    figures: list[Figure]


# --------------------------------------------------------------------------- numbers
def fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def table_rows(summary: dict[str, Any]) -> list[tuple[str, list[str], bool]]:
    """(row label, cells per class + mean, optimistic) in Table I's layout."""
    out = []
    classes = summary["classes"]
    for model, by_protocol in summary["table"].items():
        for protocol, entry in by_protocol.items():
            cells = [fmt(entry["per_class"][c]["mean"], entry["per_class"][c]["std"]) for c in classes]
            cells.append(fmt(entry["overall"]["mean"], entry["overall"]["std"]))
            out.append(
                (f"{display_name(model)}, ours, {PROTOCOL_TITLES[protocol]}", cells, entry["optimistic"])
            )
        honest = next((p for p in ("val-split", "normal-only") if p in by_protocol), None)
        if honest and "paper" in by_protocol:
            cells = []
            for c in [*classes, None]:
                if c is None:
                    a, b = by_protocol["paper"]["overall"]["mean"], by_protocol[honest]["overall"]["mean"]
                else:
                    a, b = (
                        by_protocol["paper"]["per_class"][c]["mean"],
                        by_protocol[honest]["per_class"][c]["mean"],
                    )
                cells.append("n/a" if a is None or b is None else f"{a - b:+.3f}")
            out.append((f"{display_name(model)}: paper protocol minus {honest}", cells, False))
    reference = summary.get("published")
    if reference:
        run_models = list(summary["table"])
        for model in sorted(
            reference["rows"], key=lambda m: (m not in run_models, list(reference["rows"]).index(m))
        ):
            row = reference["rows"][model]
            cells = [f"{row['per_class'][c]:.3f}" for c in classes] + [f"{row['mean']:.3f}"]
            out.append((f"{row['label']}, published (Table I, OPTIMISTIC)", cells, True))
    return out


def published_only_rows() -> list[tuple[str, list[str]]]:
    rows = []
    for model, values in published.TABLE_I.items():
        cells = [f"{values[c]:.3f}" for c in published.TABLE_I_CLASSES]
        cells.append(f"{np.mean(list(values.values())):.3f}")
        rows.append((published.ROW_LABELS[model], cells))
    return rows


# --------------------------------------------------------------------------- figures
def _featured(plan: Plan, model: str) -> list[RunSpec]:
    """The runs figures show per class: the first seed, the first training protocol."""
    protocol = plan.runs[0].protocol
    seed = plan.runs[0].seed
    return [s for s in plan.runs if s.model == model and s.seed == seed and s.protocol == protocol]


def _panel_name(plan: Plan, spec: RunSpec) -> str:
    label = column_label(plan, spec.class_name)
    if spec.class_name is None:
        return label
    return f"{'normal' if plan.options.one_class else 'abnormal'}: {label}"


def _losses_from_log(spec: RunSpec, metrics: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per-step losses of ``log.jsonl`` against fractional epochs (the last record of a step wins,
    so a resumed run's repeated steps are not drawn twice); epoch means when no step was logged."""
    train_total = metrics["counts"]["train"]["total"]
    steps = max(train_total // max(min(spec.config.data.batch_size, train_total), 1), 1)
    points: dict[str, dict[float, float]] = {}
    log = spec.run_dir / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("event") != "step":
                continue
            x = record["epoch"] - 1 + record["step"] / steps
            for key, value in record.items():
                if key not in ("event", "epoch", "step") and isinstance(value, (int, float)):
                    points.setdefault(key, {})[x] = float(value)
    if not points:
        for h in metrics["history"]:
            for key, value in h["losses"].items():
                if key not in ("d_reinits", "skipped_images"):
                    points.setdefault(key, {})[float(h["epoch"])] = float(value)
    return {k: sorted(v.items()) for k, v in points.items()}


def build_figures(plan: Plan, summary: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    classes = summary["classes"]
    columns = column_order(plan)
    many = len(summary["models"]) > 1

    # Fig. 4: bars with seed error bars, every model and protocol, Table I's values as markers.
    series = []
    for model, by_protocol in summary["table"].items():
        for protocol, entry in by_protocol.items():
            means = [entry["per_class"][c]["mean"] for c in classes] + [entry["overall"]["mean"]]
            stds = [entry["per_class"][c]["std"] for c in classes] + [entry["overall"]["std"]]
            series.append((f"{display_name(model)}, {PROTOCOL_TITLES[protocol]}", means, stds))
    reference = []
    if summary.get("published"):
        for model in summary["models"]:
            row = summary["published"]["rows"].get(model)
            if row:
                reference.append(
                    (f"{row['label']}, published", [row["per_class"][c] for c in classes] + [row["mean"]])
                )
    seeds = len(summary["seeds"])
    out.append(
        Figure(
            "fig4_auroc_bars",
            "Fig. 4: AUROC per class",
            f"Mean test AUROC over {seeds} seed(s) per class and overall; error bars: standard deviation over "
            "seeds (none with one seed)." + (" Black markers: the paper's Table I." if reference else ""),
            figures.bar_chart([*classes, "mean"], series, reference),
        )
    )
    for model in summary["models"]:
        featured = _featured(plan, model)
        prefix = f"{display_name(model)}: " if many else ""
        tag = f"_{model}" if many else ""
        scores = {s.run_dir: read_test_scores(s.run_dir) for s in featured}
        protocol, seed = featured[0].protocol, featured[0].seed
        where = f"{PROTOCOL_TITLES[protocol]} test split, seed {seed}"
        out.append(
            Figure(
                f"fig5_histograms{tag}",
                f"{prefix}Fig. 5: normal vs abnormal scores",
                f"Histograms of the anomaly score (Eq. 5) of the {where}, min-max scaled over that set (Eq. 6).",
                figures.score_histograms(
                    [
                        (_panel_name(plan, s), scores[s.run_dir]["label"], scores[s.run_dir]["raw_score"])
                        for s in featured
                    ]
                ),
            )
        )
        examples = {s.run_dir: load_run_examples(s.run_dir) for s in featured}
        tsne = []
        for s in featured:
            data = examples[s.run_dir]
            embedding = run_tsne(s.run_dir, data) if data is not None else None
            if embedding is not None:
                tsne.append((_panel_name(plan, s), embedding, data["tsne_labels"]))
        if tsne:
            out.append(
                Figure(
                    f"fig6_tsne{tag}",
                    f"{prefix}Fig. 6: t-SNE of "
                    + ("discriminator features f(x)" if model == "skipganomaly" else "the scoring features"),
                    f"t-SNE (scikit-learn) of {FEATURE_NAMES.get(model, 'the features the model scores with')} "
                    f"of up to 1,000 randomly subsampled images of the {where}.",
                    figures.tsne_panels(tsne),
                )
            )
        for spec in featured:
            data = examples[spec.run_dir]
            if data is None or not len(data["grid_groups"]):
                continue
            out.append(
                Figure(
                    f"fig7_examples{tag}_{slug(column_label(plan, spec.class_name))}",
                    f"{prefix}Fig. 7: examples, {_panel_name(plan, spec)}",
                    f"Test images ({where}) with their reconstructions and anomaly maps |x - x_hat| (colour: 0 to "
                    "twice the 99th percentile of normal validation pixel errors); numbers are deployment scores "
                    "(1 = the most anomalous normal validation image). Typical images are drawn at random.",
                    figures.example_grid(data, GROUPS),
                )
            )
        by_class = {}
        for spec in plan.runs:
            if spec.model == model and spec.protocol == protocol:
                by_class.setdefault(spec.class_name, []).append(spec)
        roc_panels = []
        curve_panels = []
        for class_name in columns:
            specs = by_class.get(class_name, [])
            if not specs:
                continue
            name = _panel_name(plan, specs[0])
            curves = []
            runs = []
            for s in specs:
                data = read_test_scores(s.run_dir)
                curves.append((f"seed {s.seed}", data["label"], data["raw_score"]))
                metrics = json.loads((s.run_dir / "metrics.json").read_text())
                runs.append(
                    {
                        "label": f"seed {s.seed}",
                        "history": metrics["history"],
                        "epoch_best": metrics["epoch_best"],
                    }
                )
            roc_panels.append((name, curves))
            curve_panels.append((name, runs))
        out.append(
            Figure(
                f"roc_curves{tag}",
                f"{prefix}ROC curves",
                f"ROC curves of the {PROTOCOL_TITLES[protocol]} test split, one per seed (legend: AUROC).",
                figures.roc_curves(roc_panels),
            )
        )
        out.append(
            Figure(
                f"training_auroc{tag}",
                f"{prefix}Validation AUROC per epoch",
                "Validation AUROC after each epoch (circle: the epoch selected); dotted: the paper protocol's "
                "AUROC on the whole evaluation pool (OPTIMISTIC; its best epoch is what the paper rows report).",
                figures.auroc_curves(curve_panels),
            )
        )
        loss_runs = []
        for spec in featured:
            metrics = json.loads((spec.run_dir / "metrics.json").read_text())
            loss_runs.append((column_label(plan, spec.class_name), _losses_from_log(spec, metrics)))
        out.append(
            Figure(
                f"training_losses{tag}",
                f"{prefix}Training losses",
                f"Losses logged during training (seed {seed}), per class: g = generator total, d = discriminator, "
                "and the generator's terms (for Skip-GANomaly g_adv, g_con of Eq. 2 and g_lat of Eq. 3; Eq. 4 "
                "weights them into g).",
                figures.loss_curves(loss_runs),
            )
        )
    return out


# --------------------------------------------------------------------------- text
def _settings(summary: dict[str, Any]) -> list[tuple[str, str]]:
    c = summary["config"]
    t, d, m = c["train"], c["data"], c["model"]
    wall = summary.get("training_wall_time_s")
    return [
        ("data set", f"{summary['dataset']} ({summary['setting']})"),
        ("models", ", ".join(display_name(x) for x in summary["models"])),
        ("classes", ", ".join(summary["classes"])),
        ("seeds", ", ".join(str(s) for s in summary["seeds"]) + " (training seed; the data split is fixed)"),
        ("protocols", ", ".join(PROTOCOL_TITLES[p] for p in summary["protocols"])),
        ("profile", summary["profile"]["note"]),
        (
            "training",
            f"{t['epochs']} epochs, batch {d['batch_size']}, {d['image_size']}x{d['image_size']} px, "
            f"ngf {m['ngf']}, ndf {m['ndf']}, nz {m['nz']}; preset {t['preset']}: Adam lr {t['lr']:g} "
            f"(betas {t['beta1']:g}, {t['beta2']:g}, {t['lr_decay']} decay), w_adv {t['w_adv']:g}, "
            f"w_con {t['w_con']:g}, w_lat {t['w_lat']:g}; score lambda {c['eval']['score_lambda']:g}",
        ),
        (
            "trainings",
            f"{summary['trainings']}"
            + (f", {wall / 60:.1f} min of training and per-epoch scoring" if wall else ""),
        ),
        ("package", f"skipganomaly {summary['package_version']}"),
    ]


def _notes(summary: dict[str, Any]) -> list[str]:
    notes = [
        "Cells: mean ± sample standard deviation (ddof = 1) of the test AUROC over seeds; one seed gives the "
        "mean alone. Mean column: the mean of the class means, ± the standard deviation over seeds of each "
        "seed's mean over the classes.",
    ]
    for protocol in summary["protocols"]:
        notes.append(f"{protocol}: {summary['protocol_notes'][protocol]}.")
    if "paper" in summary["protocols"] and len(summary["protocols"]) > 1:
        notes.append(
            "The paper-protocol figures come from the same trainings as the honest ones: each epoch also "
            "scored the whole evaluation pool in the official order with train-mode BatchNorm, and the best "
            "epoch on it is reported."
        )
    if summary.get("published"):
        notes.append(
            f"Published rows: {summary['published']['note']}; their mean (computed here) is over the classes "
            f"shown. Source: {summary['published']['citation']}"
        )
    return notes


def _row_for_csv(row: dict[str, Any]) -> list[str]:
    return [
        display_name(row["model"]),
        str(row["class"]),
        str(row["seed"]),
        PROTOCOL_TITLES[row["protocol"]],
        fmt(row["auroc"]),
        fmt(row["auprc"]),
        fmt(row["f1"]),
        str(row["epoch_best"]),
        f"{row['wall_time_s']:.0f}" if not math.isnan(row["wall_time_s"]) else "n/a",
    ]


RUN_HEADER = ["model", "class", "seed", "protocol", "AUROC", "AUPRC", "F1", "best epoch", "wall time (s)"]


def _reduced(summary: dict[str, Any]) -> bool:
    """Whether the runs differ from the paper's settings (a light profile or changed settings),
    which the report then says at the top."""
    profile = summary["profile"]
    return profile["name"] != "faithful" or bool(profile.get("changed"))


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]], figs: list[Figure]) -> str:
    lines = [f"# Skip-GANomaly reproduction: {summary['dataset']}", ""]
    if _reduced(summary):
        lines += [f"> **{summary['profile']['note']}.**", ""]
    lines += [f"- **{k}**: {v}" for k, v in _settings(summary)]
    header = ["model, protocol", *summary["classes"], "mean"]
    lines += ["", "## Table I layout: test AUROC per class", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells, optimistic in table_rows(summary):
        lines.append("| " + " | ".join([f"*{label}*" if optimistic else label, *cells]) + " |")
    lines += [""] + [f"- {n}" for n in _notes(summary)]
    if not summary.get("published"):
        lines += [
            "",
            "### Table I as published (CIFAR-10, a different data set, for reference only; means computed here)",
            "",
        ]
        header = ["model", *published.TABLE_I_CLASSES, "mean"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in published_only_rows()]
        lines += ["", f"Source: {published.CITATION}"]
    lines += ["", "## Figures", ""]
    for fig in figs:
        lines += [f"### {fig.title}", "", f"![{fig.title}](figures/{fig.name}.png)", "", fig.caption, ""]
    lines += [
        "## Every run",
        "",
        "F1: " + "; ".join(f"{PROTOCOL_TITLES[p]}: {n}" for p, n in _f1_notes(summary)),
        "",
    ]
    lines += ["| " + " | ".join(RUN_HEADER) + " |", "|" + "---|" * len(RUN_HEADER)]
    lines += ["| " + " | ".join(_row_for_csv(r)) + " |" for r in rows]
    lines += [
        "",
        "## Settings",
        "",
        "```yaml",
        yaml.safe_dump(summary["config"], sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _f1_notes(summary: dict[str, Any]) -> list[tuple[str, str]]:
    notes = []
    for by_protocol in summary["table"].values():
        for protocol, entry in by_protocol.items():
            if protocol not in dict(notes):
                notes.append((protocol, entry["f1_note"]))
    return notes


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
tr.optimistic td{color:#8a4b00;background:#fff8ec}.warn{background:#fff3cd;border:1px solid #e0c36b;
padding:.6em 1em}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;
color:#555}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def html_report(summary: dict[str, Any], rows: list[dict[str, Any]], figs: list[Figure]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Skip-GANomaly reproduction: {e(summary['dataset'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Skip-GANomaly reproduction: {e(summary['dataset'])}</h1>",
    ]
    if _reduced(summary):
        parts.append(f'<p class="warn"><strong>{e(summary["profile"]["note"])}.</strong></p>')
    parts.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _settings(summary)) + "</dl>")
    parts.append("<h2>Table I layout: test AUROC per class</h2>")
    header = ["model, protocol", *summary["classes"], "mean"]
    table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for label, cells, optimistic in table_rows(summary):
        cls = ' class="optimistic"' if optimistic else ""
        table.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in [label, *cells]) + "</tr>")
    parts.append("".join(table) + "</table>")
    parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(summary)) + "</ul>")
    if not summary.get("published"):
        parts.append(
            "<h3>Table I as published (CIFAR-10, a different data set, for reference only; means computed here)</h3>"
        )
        header = ["model", *published.TABLE_I_CLASSES, "mean"]
        table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
        for label, cells in published_only_rows():
            table.append(
                '<tr class="optimistic">' + "".join(f"<td>{e(c)}</td>" for c in [label, *cells]) + "</tr>"
            )
        parts.append("".join(table) + f"</table><p>Source: {e(published.CITATION)}</p>")
    parts.append("<h2>Figures</h2>")
    for fig in figs:
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f'<figure><h3>{e(fig.title)}</h3><img alt="{e(fig.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(fig.caption)}</figcaption></figure>"
        )
    parts.append("<h2>Every run</h2>")
    parts.append(
        "<p>F1: " + e("; ".join(f"{PROTOCOL_TITLES[p]}: {n}" for p, n in _f1_notes(summary))) + "</p>"
    )
    table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in RUN_HEADER) + "</tr>"]
    for r in rows:
        cls = ' class="optimistic"' if r["optimistic"] else ""
        table.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in _row_for_csv(r)) + "</tr>")
    parts.append("".join(table) + "</table>")
    parts.append("<h2>Settings</h2><pre>" + e(yaml.safe_dump(summary["config"], sort_keys=False)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- all files
def write_report(plan: Plan) -> Report:
    """Collect every run of ``plan`` and write results.csv, summary.json, figures, report.md and
    report.html into the output folder."""
    output = Path(plan.options.output)
    rows = collect_rows(plan)
    summary = summarize(plan, rows)
    figs = build_figures(plan, summary)
    for fig in figs:
        write_bytes(output / "figures" / f"{fig.name}.png", fig.png)
    current = {f"{fig.name}.png" for fig in figs}
    for stale in (output / "figures").glob("*.png"):  # figures of an earlier report of other runs
        if stale.name not in current:
            stale.unlink()
    write_text(output / "results.csv", results_csv(rows))
    write_json(output / "summary.json", summary | {"figures": [f"figures/{f.name}.png" for f in figs]})
    write_text(output / "report.md", markdown(summary, rows, figs))
    write_text(output / "report.html", html_report(summary, rows, figs))
    return Report(rows, summary, figs)


def summary_table_text(summary: dict[str, Any]) -> str:
    """The Table I layout as plain text, for the terminal."""
    header = ["", *summary["classes"], "mean"]
    body = [[label, *cells] for label, cells, _ in table_rows(summary)]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    ]
    return "\n".join(lines)

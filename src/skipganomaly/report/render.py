"""Write the report of a reproduction: ``results.csv``, ``summary.json``, figures, ``report.md``
and a self-contained ``report.html`` (inline CSS, figures embedded as base64 PNG; no script, no
stylesheet, font or image fetched from anywhere, no external address at all).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..runtime.files import write_bytes, write_json, write_text
from ..scoring.shortcuts import NOTE as SHORTCUT_NOTE
from ..scoring.shortcuts import STATISTICS, TITLES, is_shortcut
from ..specs.models import display_name
from ..specs.protocols import HONEST_PROTOCOLS, PAPER, PROTOCOL_SPECS
from . import published
from .figure_set import Figure, build_figures
from .results import collect_rows, control_cell, results_csv, summarize
from .run_files import read_runs
from .runner import Plan
from .summary_types import Summary, TableEntry


@dataclass
class Report:
    rows: list[dict[str, Any]]
    summary: Summary
    figures: list[Figure]


# --------------------------------------------------------------------------- numbers
def fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _class_means(entry: TableEntry, classes: list[str]) -> list[float | None]:
    """An entry's mean per class, then its overall mean (the cells of one table row)."""
    return [entry["per_class"][c]["mean"] for c in classes] + [entry["overall"]["mean"]]


def steadiness_cell(entry: TableEntry) -> str:
    """The steadiness column: the mean over runs of the AUROC's spread over the last epochs; a
    dagger where it is the test curve's (normal-only has no validation AUROC)."""
    steadiness = entry.get("steadiness")
    if not steadiness or steadiness["mean"] is None:
        return "n/a"
    return fmt(steadiness["mean"]) + (" †" if steadiness["curve"] == "test" else "")


def steadiness_header(summary: Summary) -> str:
    return f"AUROC std, last {summary.get('steady_epochs', 5)} epochs"


def table_rows(summary: Summary) -> list[tuple[str, list[str], bool]]:
    """(row label, cells per class + mean + steadiness, optimistic) in Table I's layout."""
    out = []
    classes = summary["classes"]
    for model, by_protocol in summary["table"].items():
        for protocol, entry in by_protocol.items():
            cells = [fmt(entry["per_class"][c]["mean"], entry["per_class"][c]["std"]) for c in classes]
            cells.append(fmt(entry["overall"]["mean"], entry["overall"]["std"]))
            cells.append(steadiness_cell(entry))
            out.append(
                (f"{display_name(model)}, ours, {PROTOCOL_SPECS[protocol].title}", cells, entry["optimistic"])
            )
        honest = next((p for p in HONEST_PROTOCOLS if p in by_protocol), None)
        if honest and PAPER.name in by_protocol:
            pairs = zip(
                _class_means(by_protocol[PAPER.name], classes),
                _class_means(by_protocol[honest], classes),
                strict=True,
            )
            cells = ["n/a" if a is None or b is None else f"{a - b:+.3f}" for a, b in pairs] + [""]
            out.append((f"{display_name(model)}: paper protocol minus {honest}", cells, False))
    reference = summary["published"]
    if reference:
        run_models = list(summary["table"])
        order = list(reference["rows"])
        for model in sorted(order, key=lambda m: (m not in run_models, order.index(m))):
            row = reference["rows"][model]
            cells = [f"{row['per_class'][c]:.3f}" for c in classes] + [f"{row['mean']:.3f}", ""]
            out.append((f"{row['label']}, published (Table I, OPTIMISTIC)", cells, True))
    return out


def published_only_rows() -> list[tuple[str, list[str]]]:
    rows = []
    for model, values in published.TABLE_I.items():
        cells = [f"{values[c]:.3f}" for c in published.TABLE_I_CLASSES]
        cells.append(f"{np.mean(list(values.values())):.3f}")
        rows.append((published.ROW_LABELS[model], cells))
    return rows


# --------------------------------------------------------------------------- text
def _settings(summary: Summary) -> list[tuple[str, str]]:
    c = summary["config"]
    t, d, m = c["train"], c["data"], c["model"]
    wall = summary.get("training_wall_time_s")
    return [
        ("data set", f"{summary['dataset']} ({summary['setting']})"),
        ("models", ", ".join(display_name(x) for x in summary["models"])),
        ("classes", ", ".join(summary["classes"])),
        ("seeds", ", ".join(str(s) for s in summary["seeds"]) + " (training seed; the data split is fixed)"),
        ("protocols", ", ".join(PROTOCOL_SPECS[p].title for p in summary["protocols"])),
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


def _notes(summary: Summary) -> list[str]:
    notes = [
        "Cells: mean ± sample standard deviation (ddof = 1) of the test AUROC over seeds; one seed gives the "
        "mean alone. Mean column: the mean of the class means, ± the standard deviation over seeds of each "
        "seed's mean over the classes.",
    ]
    notes.append(
        f"{steadiness_header(summary)}: the mean over the row's runs of each run's population standard "
        f"deviation of its validation AUROC after each of its last {summary.get('steady_epochs', 5)} "
        "epochs, or of all its epochs when it had fewer (steadiness; the paper rows: of the paper "
        "protocol's AUROC); † the test AUROC's, where validation holds no anomalies (normal-only)."
    )
    for protocol in summary["protocols"]:
        notes.append(f"{protocol}: {summary['protocol_notes'][protocol]}.")
    if PAPER.name in summary["protocols"] and len(summary["protocols"]) > 1:
        notes.append(
            "The paper-protocol figures come from the same trainings as the honest ones: each epoch also "
            "scored the whole evaluation pool in the official order with train-mode BatchNorm, and the best "
            "epoch on it is reported."
        )
    if summary["published"]:
        notes.append(
            f"Published rows: {summary['published']['note']}; their mean (computed here) is over the classes "
            f"shown. Source: {summary['published']['citation']}"
        )
    return notes


def table_ii_rows(summary: Summary) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(header, rows) of the Table II layout: AUROC per anomaly type and overall per run."""
    table = summary.get("table_ii")
    if not table:
        return [], []
    header = ["run", *table["types"], "overall"]
    rows = []
    for row in table["rows"]:
        std = row["std"] or {}
        cells = [fmt(row["by_type"].get(t), std.get(t)) for t in table["types"]]
        cells.append(fmt(row["overall"], std.get("overall")))
        rows.append((row["label"], cells))
    return header, rows


TABLE_II_NOTE = (
    "AUROC of the test split's normal images against each anomaly type alone, and overall (normal "
    "against every anomaly), as in the paper's Table II (per threat type); mean rows: mean ± sample "
    "standard deviation over seeds."
)


def shortcut_table(summary: Summary) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(header, rows) of the trivial statistics' test AUROC beside each model's, per split."""
    rows_in = summary.get("shortcuts") or []
    if not rows_in:
        return [], []
    names = [n for n in STATISTICS if any(n in r["statistics"] for r in rows_in)]
    models = list(dict.fromkeys(m for r in rows_in for m in r["model_auroc"]))
    header = ["test split", *(TITLES[n] for n in names), *(f"{display_name(m)} AUROC" for m in models)]
    rows = []
    for r in rows_in:
        cells = []
        for n in names:
            stat = r["statistics"].get(n)
            cells.append(
                "n/a" if stat is None else f"{stat['auroc']:.3f}" + (" !" if _warned(stat, r) else "")
            )
        cells += [fmt(r["model_auroc"].get(m)) for m in models]
        label = (
            r["class_name"]
            if len({x["protocol"] for x in rows_in}) == 1
            else f"{r['class_name']} ({r['protocol']})"
        )
        rows.append((label, cells))
    return header, rows


def _warned(stat: dict[str, Any], row: dict[str, Any]) -> bool:
    return any(is_shortcut(stat, value) for value in row["model_auroc"].values())


def shortcut_notes(summary: Summary) -> list[str]:
    rows_in = summary.get("shortcuts") or []
    notes = [
        "AUROC of each statistic alone on the test split (as computed: below 0.5 it separates in the other "
        "direction); ! marks a shortcut. " + SHORTCUT_NOTE
    ]
    constant = {n for r in rows_in for n in r.get("constant", {})}
    unavailable = {n: why for r in rows_in for n, why in r.get("unavailable", {}).items()}
    if constant:
        notes.append(
            "The same for every image (left out): "
            + ", ".join(TITLES.get(n, n) for n in sorted(constant))
            + "."
        )
    if unavailable:
        notes.append(
            "Not available: "
            + "; ".join(f"{TITLES.get(n, n)} ({why})" for n, why in unavailable.items())
            + "."
        )
    return notes


def shortcut_warnings_of(summary: Summary) -> list[str]:
    return [w for r in summary.get("shortcuts") or [] for w in r["warnings"]]


def _row_for_csv(row: dict[str, Any]) -> list[str]:
    return [
        display_name(row["model"]),
        str(row["class"]),
        str(row["seed"]),
        PROTOCOL_SPECS[row["protocol"]].title,
        fmt(row["auroc"]),
        fmt(row["auprc"]),
        fmt(row["f1"]),
        str(row["epoch_best"]),
        f"{row['wall_time_s']:.0f}" if not math.isnan(row["wall_time_s"]) else "n/a",
        fmt(row.get("auroc_std_last")) + (" †" if row.get("std_curve") == "test" else ""),
        control_cell(row, TITLES),
    ]


RUN_HEADER = [
    "model",
    "class",
    "seed",
    "protocol",
    "AUROC",
    "AUPRC",
    "F1",
    "best epoch",
    "wall time (s)",
    "AUROC std, last epochs",
    "trivial detectors: strongest statistic (separability), pixel kNN (AUROC); (model's margin)",
]


def _reduced(summary: Summary) -> bool:
    """Whether the runs differ from the paper's settings (a light profile or changed settings),
    which the report then says at the top."""
    profile = summary["profile"]
    return profile["name"] != "faithful" or bool(profile.get("changed"))


def markdown(summary: Summary, rows: list[dict[str, Any]], figs: list[Figure]) -> str:
    lines = [f"# Skip-GANomaly reproduction: {summary['dataset']}", ""]
    if _reduced(summary):
        lines += [f"> **{summary['profile']['note']}.**", ""]
    lines += [f"- **{k}**: {v}" for k, v in _settings(summary)]
    header = ["model, protocol", *summary["classes"], "mean", steadiness_header(summary)]
    lines += ["", "## Table I layout: test AUROC per class", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells, optimistic in table_rows(summary):
        lines.append("| " + " | ".join([f"*{label}*" if optimistic else label, *cells]) + " |")
    lines += [""] + [f"- {n}" for n in _notes(summary)]
    header, rows_ii = table_ii_rows(summary)
    if rows_ii:
        lines += ["", "## Table II layout: test AUROC per anomaly type", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows_ii]
        lines += ["", f"- {TABLE_II_NOTE}"]
    header, rows_sc = shortcut_table(summary)
    if rows_sc:
        lines += ["", "## Shortcut check: trivial image statistics", ""]
        warnings = shortcut_warnings_of(summary)
        if warnings:
            lines += [
                "> **SHORTCUT WARNING**: a trivial image statistic separates normal from abnormal "
                "test images about as well as the model, or very well on its own:",
                ">",
            ]
            lines += [f"> - {w}" for w in warnings]
            lines += [""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows_sc]
        lines += [""] + [f"- {n}" for n in shortcut_notes(summary)]
    if not summary["published"]:
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
        "F1: " + "; ".join(f"{PROTOCOL_SPECS[p].title}: {n}" for p, n in _f1_notes(summary)),
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


def _f1_notes(summary: Summary) -> list[tuple[str, str]]:
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


def _html_table(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    e = html.escape
    table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for label, cells in rows:
        table.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in [label, *cells]) + "</tr>")
    return "".join(table) + "</table>"


def html_report(summary: Summary, rows: list[dict[str, Any]], figs: list[Figure]) -> str:
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
    header = ["model, protocol", *summary["classes"], "mean", steadiness_header(summary)]
    table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for label, cells, optimistic in table_rows(summary):
        cls = ' class="optimistic"' if optimistic else ""
        table.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in [label, *cells]) + "</tr>")
    parts.append("".join(table) + "</table>")
    parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(summary)) + "</ul>")
    header, rows_ii = table_ii_rows(summary)
    if rows_ii:
        parts.append("<h2>Table II layout: test AUROC per anomaly type</h2>")
        parts.append(_html_table(header, rows_ii) + f"<p>{e(TABLE_II_NOTE)}</p>")
    header, rows_sc = shortcut_table(summary)
    if rows_sc:
        parts.append("<h2>Shortcut check: trivial image statistics</h2>")
        warnings = shortcut_warnings_of(summary)
        if warnings:
            parts.append(
                '<div class="warn"><strong>SHORTCUT WARNING</strong>: a trivial image statistic separates '
                "normal from abnormal test images about as well as the model, or very well on its own:<ul>"
                + "".join(f"<li>{e(w)}</li>" for w in warnings)
                + "</ul></div>"
            )
        parts.append(_html_table(header, rows_sc))
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in shortcut_notes(summary)) + "</ul>")
    if not summary["published"]:
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
        "<p>F1: " + e("; ".join(f"{PROTOCOL_SPECS[p].title}: {n}" for p, n in _f1_notes(summary))) + "</p>"
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
    runs = read_runs(plan)  # every run folder's files, each read once
    rows = collect_rows(plan, runs)
    summary = summarize(plan, rows, runs)
    figs = build_figures(plan, summary, runs)
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


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    )


def summary_table_text(summary: Summary) -> str:
    """The Table I layout as plain text, for the terminal; then the Table II layout and the
    shortcut warnings, when the runs have them."""
    header = ["", *summary["classes"], "mean", steadiness_header(summary)]
    parts = [_text_table(header, [[label, *cells] for label, cells, _ in table_rows(summary)])]
    header, rows_ii = table_ii_rows(summary)
    if rows_ii:
        parts.append("Table II layout: test AUROC per anomaly type (normal vs that type) and overall")
        parts.append(_text_table(["", *header[1:]], [[label, *cells] for label, cells in rows_ii]))
    warnings = shortcut_warnings_of(summary)
    if warnings:
        from ..scoring.shortcuts import warning_block

        # Each split's overall lines; the per-type ones are counted (the report lists them all).
        overall = [w for w in warnings if ": test, normal vs " not in w]
        per_type = len(warnings) - len(overall)
        if per_type:
            overall.append(f"and {per_type} for single anomaly types (see the report)")
        parts.append(warning_block(overall))
    return "\n".join(parts)

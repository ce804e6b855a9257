"""``reproduce --sweep``'s results: one row per (axis value, class, seed, protocol), a Fig. 9-style
figure per axis (AUROC against the value, one line per class, mean and spread over seeds; the
honest protocol's panel beside the paper protocol's, as Table I sets them side by side), and
``results.csv``, ``summary.json``, ``report.md`` and a self-contained ``report.html``.

A rescored setting (lambda of Eq. 5) is scored from each base run's ``scores.csv``: A = lambda R +
(1 - lambda) L per image, from the R and L the run saved for its validation and test images at
the epoch it selected (with its own lambda). Its figures are therefore those of one checkpoint per
run; the paper protocol's per-epoch evaluation keeps no per-image parts, so a rescored axis has the
honest panel only.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.files import write_bytes, write_text
from ..scoring.metrics import auroc
from ..specs.errors import UserError
from ..specs.protocols import PAPER, PROTOCOL_SPECS, PROTOCOLS
from .figures import SERIES_COLOURS, _figure, to_png
from .runner import RunSpec, slug
from .sweep import PAPER_VALUES, SweepAxis, SweepPlan, format_value

COLUMNS = [
    "key",
    "value",
    "model",
    "class",
    "seed",
    "protocol",
    "optimistic",
    "auroc",
    "val_auroc",
    "epoch",
    "run_dir",
]


def score_parts(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per split (``val``, ``test``) of ``scores.csv``: labels, raw score, R and L."""
    path = run_dir / "scores.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing; run the same reproduce command again to write it")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    parts: dict[str, dict[str, np.ndarray]] = {}
    for split in ("val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        parts[split] = {
            name: np.array([float(r[column]) for r in chosen])
            for name, column in (
                ("label", "label"),
                ("raw", "raw_score"),
                ("r", "reconstruction"),
                ("l", "latent"),
            )
        }
    return parts


def rescored(spec: RunSpec, score_lambda: float) -> tuple[float, float]:
    """(test AUROC, validation AUROC) of a run's saved parts scored with ``score_lambda`` (Eq. 5).
    Refuses parts that do not add up to the run's own score (a score that is not Eq. 5's)."""
    parts = score_parts(spec.run_dir)
    own = spec.config.eval.score_lambda
    figures = []
    for split in ("test", "val"):
        p = parts[split]
        if len(p["label"]) == 0:  # the paper protocol writes its one evaluation set as val
            figures.append(math.nan)
            continue
        # scores.csv keeps 6 significant digits: compare at that precision.
        tolerance = 1e-4 * (np.max(np.abs(p["raw"])) + 1e-12)
        if np.max(np.abs(own * p["r"] + (1 - own) * p["l"] - p["raw"])) > tolerance:
            raise UserError(
                f"{spec.run_dir}/scores.csv: its scores are not Eq. 5's lambda R + (1 - lambda) L, so lambda "
                "cannot be rescored from them; sweep it on a preset without score terms"
            )
        figures.append(auroc(p["label"], score_lambda * p["r"] + (1 - score_lambda) * p["l"]))
    return figures[0], figures[1]


def _row(plan: SweepPlan, axis: SweepAxis, value: Any, spec: RunSpec, protocol: str, **figures) -> dict:
    return {
        "key": axis.key,
        "value": value,
        "model": spec.model,
        "class": spec.class_name if spec.class_name is not None else "-",
        "seed": spec.seed,
        "protocol": protocol,
        "optimistic": int(PROTOCOL_SPECS[protocol].optimistic),
        "run_dir": spec.run_dir.relative_to(plan.options.output).as_posix(),
    } | figures


def collect_sweep_rows(plan: SweepPlan) -> list[dict[str, Any]]:
    """Every point's rows: its runs' own protocol and the paper protocol's (trained axes), or its
    runs' parts scored at the value (rescored axes)."""
    rows = []
    for point in plan.points:
        for spec in point.runs:
            metrics = json.loads((spec.run_dir / "metrics.json").read_text())
            row = functools.partial(_row, plan, point.axis, point.value, spec)
            own = spec.protocol in plan.options.protocols
            if point.axis.rescored:
                if own and spec.protocol != PAPER.name:
                    test, val = rescored(spec, float(point.value))
                    rows.append(row(spec.protocol, auroc=test, val_auroc=val, epoch=metrics["epoch_best"]))
                continue
            if own:
                test, val = metrics["test"]["auroc"], metrics["val"]["auroc"]
                rows.append(row(spec.protocol, auroc=test, val_auroc=val, epoch=metrics["epoch_best"]))
            paper = metrics.get("paper_protocol")
            if spec.paper_each_epoch and paper:
                rows.append(row(PAPER.name, auroc=paper["auroc"], val_auroc=math.nan, epoch=paper["epoch"]))
    return rows


def _stats(values: list[float]) -> dict[str, float | int]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    # The sample standard deviation over seeds, as reproduce's tables give it.
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def summarize_sweep(plan: SweepPlan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per axis and protocol: per value, each class's mean and spread over seeds and the mean over
    classes (of the per-class means); the best value and the paper's value where swept."""
    axes = []
    for axis in plan.axes:
        protocols = {}
        for protocol in [
            p for p in PROTOCOLS if any(r["protocol"] == p and r["key"] == axis.key for r in rows)
        ]:
            mine = [r for r in rows if r["key"] == axis.key and r["protocol"] == protocol]
            classes = list(dict.fromkeys(r["class"] for r in mine))
            values = []
            for value in axis.values:
                at = [r for r in mine if r["value"] == value]
                per_class = {c: _stats([r["auroc"] for r in at if r["class"] == c]) for c in classes}
                means = [s["mean"] for s in per_class.values() if s["n"]]
                values.append(
                    {
                        "value": value,
                        "classes": per_class,
                        "mean": float(np.mean(means)) if means else math.nan,
                        "seed_std": _stats([r["auroc"] for r in at])["std"],
                    }
                )
            finite = [v for v in values if not math.isnan(v["mean"])]
            best = max(finite, key=lambda v: v["mean"])["value"] if finite else None
            protocols[protocol] = {
                "optimistic": PROTOCOL_SPECS[protocol].optimistic,
                "classes": classes,
                "values": values,
                "best_value": best,
            }
        axes.append(
            {
                "key": axis.key,
                "values": list(axis.values),
                "rescored": axis.rescored,
                "paper_value": PAPER_VALUES.get(axis.key),
                "protocols": protocols,
            }
        )
    base = plan.base
    return {
        "dataset": base.dataset,
        "setting": base.setting,
        "profile": base.profile.name,
        "profile_note": base.profile_note,
        "seeds": list(dict.fromkeys(plan.options.seeds)),
        "models": list(dict.fromkeys(plan.options.models)),
        "trainings": len(plan.runs),
        "axes": axes,
    }


def sweep_figure(axis: dict[str, Any]) -> bytes:
    """Fig. 9's form: AUROC against the swept value (evenly spaced ticks), one line per class with
    its mean over seeds and the spread (± one sample standard deviation) as a band, the mean over classes
    in black; one panel per protocol, the paper's value marked."""
    protocols = list(axis["protocols"].items())
    fig = _figure(3.6 * max(len(protocols), 1), 3.0)
    panels = fig.subplots(1, max(len(protocols), 1), squeeze=False)[0]
    x = np.arange(len(axis["values"]))
    labels = [format_value(v) for v in axis["values"]]
    for ax, (protocol, data) in zip(panels, protocols, strict=False):
        for k, name in enumerate(data["classes"]):
            mean = np.array([v["classes"][name]["mean"] for v in data["values"]])
            std = np.array([v["classes"][name]["std"] for v in data["values"]])
            colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
            ax.plot(x, mean, color=colour, marker="o", ms=3, lw=1.2, label=str(name))
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
        ax.plot(x, [v["mean"] for v in data["values"]], color="black", lw=2, label="mean of classes")
        if axis["paper_value"] in axis["values"]:
            ax.axvline(axis["values"].index(axis["paper_value"]), color="grey", ls="--", lw=1)
        kind = "optimistic" if data["optimistic"] else "honest"
        ax.set_title(f"{protocol} ({kind})", fontsize=9)
        ax.set_xticks(x, labels)
        ax.set_xlabel(axis["key"], fontsize=8)
        ax.set_ylabel("test AUROC" if protocol != PAPER.name else "AUROC, best epoch on test", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6, loc="lower right")
    return to_png(fig)


def _cell(stats: dict[str, Any]) -> str:
    if not stats["n"]:
        return "-"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats["n"] > 1 else f"{stats['mean']:.3f}"


def axis_tables(axis: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, body) per protocol: a row per value, a column per class and the mean."""
    tables = []
    for protocol, data in axis["protocols"].items():
        header = [axis["key"], *[str(c) for c in data["classes"]], "mean of classes"]
        body = [
            [
                format_value(v["value"]) + (" (paper)" if v["value"] == axis["paper_value"] else ""),
                *[_cell(v["classes"][c]) for c in data["classes"]],
                "-" if math.isnan(v["mean"]) else f"{v['mean']:.3f}",
            ]
            for v in data["values"]
        ]
        kind = "OPTIMISTIC: the best epoch on the test images" if data["optimistic"] else "honest"
        tables.append((f"{protocol} ({kind})", header, body))
    return tables


def axis_finding(axis: dict[str, Any]) -> list[str]:
    """One sentence per protocol: the best value, and where the paper's value stands."""
    lines = []
    for protocol, data in axis["protocols"].items():
        if data["best_value"] is None:
            continue
        means = {format_value(v["value"]): v["mean"] for v in data["values"]}
        text = f"{protocol}: best {axis['key']} = {format_value(data['best_value'])} (mean AUROC {means[format_value(data['best_value'])]:.3f})"
        if axis["paper_value"] in axis["values"]:
            paper = format_value(axis["paper_value"])
            rank = sorted(means.values(), reverse=True).index(means[paper]) + 1
            text += f"; the paper's {paper}: {means[paper]:.3f} (rank {rank} of {len(means)})"
        lines.append(text)
    return lines


def _figure_name(axis: dict[str, Any]) -> str:
    return f"figures/sweep-{slug(axis['key'])}.png"


def sweep_markdown(summary: dict[str, Any], command: str) -> str:
    out = [
        f"# Weight study (Fig. 9 form): {summary['dataset']}",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Setting: {summary['setting']}; seeds {', '.join(map(str, summary['seeds']))}; "
        f"{summary['trainings']} trainings. {summary['profile_note']}.",
        "",
        "Each axis varies one setting; every other setting keeps its value. Cells: test AUROC, mean ± "
        "sample standard deviation over seeds.",
    ]
    for axis in summary["axes"]:
        how = (
            "scored from the base runs' saved R and L (no retraining; the epoch each run selected)"
            if axis["rescored"]
            else "one training per value, class and seed"
        )
        out += [
            "",
            f"## {axis['key']}",
            "",
            f"Values {', '.join(map(format_value, axis['values']))}: {how}.",
            "",
        ]
        out += [f"![{axis['key']}]({_figure_name(axis)})", ""]
        for caption, header, body in axis_tables(axis):
            out += [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(row) + " |" for row in body]
            out.append("")
        out += [f"- {line}" for line in axis_finding(axis)]
    return "\n".join(out) + "\n"


def sweep_html(summary: dict[str, Any], command: str, figures: dict[str, bytes]) -> str:
    """The report as one HTML file, figures inline."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Weight study</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse}</style></head><body>",
        f"<h1>Weight study (Fig. 9 form): {html.escape(summary['dataset'])}</h1>",
        f"<p>Command: <code>{html.escape(command)}</code></p>" if command else "",
        f"<p>{html.escape(summary['setting'])}; seeds {html.escape(', '.join(map(str, summary['seeds'])))}; "
        f"{summary['trainings']} trainings. {html.escape(summary['profile_note'])}.</p>",
    ]
    for axis in summary["axes"]:
        png = base64.b64encode(figures[axis["key"]]).decode("ascii")
        parts += [
            f"<h2>{html.escape(axis['key'])}</h2>",
            f"<img alt='{html.escape(axis['key'])}' src='data:image/png;base64,{png}'>",
        ]
        for caption, header, body in axis_tables(axis):
            parts.append(f"<p><b>{html.escape(caption)}</b></p><table><tr>")
            parts.append("".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for row in body:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in axis_finding(axis)) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (f"{v:.6f}" if isinstance(v, float) and k != "value" else v) for k, v in row.items()}
        )
    return buffer.getvalue()


def write_sweep_report(plan: SweepPlan, command: str = "") -> dict[str, Any]:
    """Write ``results.csv``, ``summary.json``, ``figures/sweep-<key>.png``, ``report.md`` and
    ``report.html`` into the output folder; returns the summary."""
    output = Path(plan.options.output)
    rows = collect_sweep_rows(plan)
    summary = summarize_sweep(plan, rows)
    figures = {}
    for axis in summary["axes"]:
        figures[axis["key"]] = sweep_figure(axis)
        write_bytes(output / _figure_name(axis), figures[axis["key"]])
    write_text(output / "results.csv", _csv(rows))
    write_text(output / "summary.json", json.dumps(summary, indent=1, allow_nan=True) + "\n")
    write_text(output / "report.md", sweep_markdown(summary, command))
    write_text(output / "report.html", sweep_html(summary, command, figures))
    return summary

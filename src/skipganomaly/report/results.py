"""Run folders -> result rows (``results.csv``) -> the Table I summary (``summary.json``).

The summary's shape is :class:`~.summary_types.Summary` (typed dicts: ``summary.json`` is that dict
as JSON).
A row per (model, class, seed, protocol). Honest protocols report the test split at the epoch
chosen on validation, F1 at the threshold chosen on validation. The ``paper`` rows report the
paper protocol's evaluation at the epoch with its best AUROC, and F1 at the best threshold on that
same set: both choices look at the test labels, so those rows are marked optimistic.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..evaluation.record import STEADY_EPOCHS
from ..scoring.metrics import curve_spread
from ..scoring.shortcuts import shortcut_warnings
from ..specs.models import display_name
from ..specs.protocols import PAPER, PROTOCOL_SPECS
from . import published
from .run_files import RunFiles, read_runs
from .runner import Plan, RunSpec
from .summary_types import ShortcutRow, Stats, Summary, TableEntry, TableII, TableIIRow

COLUMNS = [
    "model",
    "dataset",
    "setting",
    "class",
    "seed",
    "protocol",
    "optimistic",
    "auroc",
    "auprc",
    "f1",
    "best_f1",
    "eer",
    "epoch_best",
    "epochs",
    "wall_time_s",
    "trained_with",
    "run_dir",
    "auroc_std_last",
    "std_curve",
    "shortcut_separability",
    "shortcut_statistic",
    "pixel_knn_auroc",
]


def _finite(value: Any) -> float:
    return float(value) if value is not None else math.nan


def steadiness_of(metrics: dict[str, Any], protocol: str) -> tuple[float, str]:
    """(spread of the AUROC over the last :data:`STEADY_EPOCHS` epochs, which curve) for a result
    row of ``protocol``: the validation curve, the test curve where validation has no AUROC
    (normal-only), the paper protocol's own curve for a paper row scored beside an honest run.
    Read from the history, so run folders written before ``steadiness`` existed have it too."""
    history = metrics.get("history", [])
    if protocol == PAPER.name and metrics.get("protocol") != PAPER.name:
        spread = curve_spread([h["paper"]["auroc"] for h in history if h.get("paper")], STEADY_EPOCHS)
        return (spread["std"] if spread else math.nan), "paper"
    spread = curve_spread([(h.get("val") or {}).get("auroc") for h in history], STEADY_EPOCHS)
    if spread is not None:
        return spread["std"], "val"
    spread = curve_spread([(h.get("test") or {}).get("auroc") for h in history], STEADY_EPOCHS)
    return (spread["std"] if spread else math.nan), "test"


def strongest_shortcut(metrics: dict[str, Any]) -> tuple[float, str]:
    """(the largest separability of a trivial statistic on the test split, its name)."""
    test = (metrics.get("shortcuts") or {}).get("test") or {}
    table = test.get("statistics") or {}
    if not table:
        return math.nan, ""
    name = max(table, key=lambda k: table[k]["separability"])
    return _finite(table[name]["separability"]), name


def pixel_knn_of(metrics: dict[str, Any]) -> float:
    """The pixel-kNN control's test AUROC (``controls``; scoring/controls.py), NaN without it."""
    control = ((metrics.get("controls") or {}).get("test") or {}).get("pixel_knn") or {}
    return _finite(control.get("auroc"))


def control_cell(row: dict[str, Any], titles: dict[str, str]) -> str:
    """The report's cell of trivial detectors for one row: the strongest statistic's
    separability and the pixel kNN's AUROC, each with the model's margin over it (negative:
    the trivial detector does better)."""
    parts = []
    if row.get("shortcut_statistic"):
        sep = row["shortcut_separability"]
        name = titles.get(row["shortcut_statistic"], row["shortcut_statistic"])
        parts.append(f"{name} {sep:.3f} ({row['auroc'] - sep:+.3f})")
    knn = row.get("pixel_knn_auroc", math.nan)
    if knn == knn:
        parts.append(f"pixel kNN {knn:.3f} ({row['auroc'] - knn:+.3f})")
    return "; ".join(parts)


def rows_of_run(plan: Plan, spec: RunSpec, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The result rows one training gives: its own protocol, and ``paper`` when it scored that."""
    base = {
        "model": spec.model,
        "dataset": plan.dataset,
        "setting": plan.setting,
        "class": spec.class_name if spec.class_name is not None else "-",
        "seed": spec.seed,
        "epochs": metrics["epochs"],
        "wall_time_s": _finite(metrics.get("wall_time_s")),
        "trained_with": spec.protocol,
        "run_dir": spec.run_dir.relative_to(plan.options.output).as_posix(),
    }
    rows = []
    if spec.protocol in plan.options.protocols:
        test = metrics["test"]
        std, curve = steadiness_of(metrics, spec.protocol)
        separability, statistic = strongest_shortcut(metrics)
        rows.append(
            base
            | {
                "auroc_std_last": std,
                "std_curve": curve,
                "shortcut_separability": separability,
                "shortcut_statistic": statistic,
                "pixel_knn_auroc": pixel_knn_of(metrics),
                "protocol": spec.protocol,
                "optimistic": int(PROTOCOL_SPECS[spec.protocol].optimistic),
                "auroc": _finite(test["auroc"]),
                "auprc": _finite(test["auprc"]),
                "f1": _finite(test.get("f1")),
                "best_f1": _finite(test["best_f1"]),
                "eer": _finite(test["eer"]),
                "epoch_best": metrics["epoch_best"],
            }
        )
    paper = metrics.get("paper_protocol")
    if spec.paper_each_epoch and paper:
        std, curve = steadiness_of(metrics, PAPER.name)
        rows.append(
            base
            | {
                "auroc_std_last": std,
                "std_curve": curve,
                "shortcut_separability": math.nan,  # the paper's set is the whole pool, not test
                "shortcut_statistic": "",
                "pixel_knn_auroc": math.nan,
                "protocol": PAPER.name,
                "optimistic": 1,
                "auroc": _finite(paper["auroc"]),
                "auprc": _finite(paper["auprc"]),
                "f1": _finite(paper["best_f1"]),
                "best_f1": _finite(paper["best_f1"]),
                "eer": _finite(paper["eer"]),
                "epoch_best": paper["epoch"],
            }
        )
    return rows


def collect_rows(plan: Plan, runs: dict[Path, RunFiles] | None = None) -> list[dict[str, Any]]:
    """Every run's result rows; ``runs`` (:func:`~.run_files.read_runs`) shares the files read."""
    runs = read_runs(plan) if runs is None else runs
    rows = []
    for spec in plan.runs:
        rows.extend(rows_of_run(plan, spec, runs[spec.run_dir].metrics))
    return rows


def results_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def column_order(plan: Plan) -> list[str | None]:
    """The classes in table order: Table I's for CIFAR-10, else the data set's."""
    if plan.class_names and published.is_table_i_classes(plan.class_names):
        return published.table_i_order([c for c in plan.classes if c is not None])
    return list(plan.classes)


def column_label(plan: Plan, class_name: str | None) -> str:
    if class_name is None:
        return plan.dataset
    if published.is_table_i_classes(plan.class_names):
        return published.paper_class_name(class_name)
    return class_name


def _stats(values: list[float]) -> Stats:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "std": std, "n": len(values), "values": values}


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None, None
    return float(np.mean(finite)), (float(np.std(finite, ddof=1)) if len(finite) > 1 else None)


def _honest_specs(plan: Plan) -> list[RunSpec]:
    """The trainings whose own protocol is reported (the runs the extra tables read)."""
    return [
        s for s in plan.runs if s.protocol in plan.options.protocols and PROTOCOL_SPECS[s.protocol].honest
    ]


def table_ii(plan: Plan, runs: dict[Path, RunFiles]) -> TableII | None:
    """The paper's Table II layout (AUROC per anomaly type and overall, test split) of every
    reported honest run whose abnormal test images come in several named types, one row per run
    and, with several seeds, a mean row per (model, protocol, class); None when no run has types."""
    types: list[str] = []
    rows: list[TableIIRow] = []
    groups: dict[tuple[str, str, str], list[TableIIRow]] = {}
    for spec in _honest_specs(plan):
        test = runs[spec.run_dir].metrics["test"]
        by_type = test.get("by_type")
        if not by_type:
            continue
        types += [t for t in by_type if t not in types]
        class_name = column_label(plan, spec.class_name) if spec.class_name is not None else ""
        where = f"{class_name}, " if class_name else ""
        row: TableIIRow = {
            "label": f"{display_name(spec.model)}, {spec.protocol}, {where}seed {spec.seed}",
            "model": spec.model,
            "protocol": spec.protocol,
            "class_name": class_name,
            "seed": spec.seed,
            "by_type": {t: _none_if_nan(v["auroc"]) for t, v in by_type.items()},
            "overall": _none_if_nan(test["auroc"]),
            "std": None,
        }
        rows.append(row)
        groups.setdefault((spec.model, spec.protocol, class_name), []).append(row)
    if not rows:
        return None
    out: list[TableIIRow] = []
    for (model, protocol, class_name), mine in groups.items():
        out += mine
        if len(mine) < 2:
            continue
        means, stds = {}, {}
        for t in types:
            means[t], stds[t] = _mean_std([r["by_type"].get(t) for r in mine])
        overall, overall_std = _mean_std([r["overall"] for r in mine])
        where = f"{class_name}, " if class_name else ""
        out.append(
            {
                "label": f"{display_name(model)}, {protocol}, {where}mean over {len(mine)} seeds",
                "model": model,
                "protocol": protocol,
                "class_name": class_name,
                "seed": None,
                "by_type": means,
                "overall": overall,
                "std": stds | {"overall": overall_std},
            }
        )
    return {"types": types, "rows": out}


def _none_if_nan(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def shortcut_rows(plan: Plan, runs: dict[Path, RunFiles]) -> list[ShortcutRow]:
    """The trivial statistics of each reported honest test split (per protocol and class; every
    seed and model of it shares the split) beside each model's mean test AUROC on it, with the
    warnings (:mod:`skipganomaly.scoring.shortcuts`) raised against those means."""
    groups: dict[tuple[str, str | None], list[RunSpec]] = {}
    for spec in _honest_specs(plan):
        groups.setdefault((spec.protocol, spec.class_name), []).append(spec)
    out: list[ShortcutRow] = []
    for (protocol, class_name), specs in groups.items():
        metrics = [runs[s.run_dir].metrics for s in specs]
        first = next(
            (
                (m.get("shortcuts") or {}).get("test")
                for m in metrics
                if (m.get("shortcuts") or {}).get("test")
            ),
            None,
        )
        if first is None:
            continue
        model_auroc: dict[str, float | None] = {}
        for model in dict.fromkeys(s.model for s in specs):
            values = [m["test"]["auroc"] for s, m in zip(specs, metrics, strict=True) if s.model == model]
            model_auroc[model] = _mean_std(values)[0]
        label = column_label(plan, class_name)
        warnings = []
        for model, value in model_auroc.items():
            types = {}
            for s, m in zip(specs, metrics, strict=True):
                if s.model == model:
                    for t, v in (m["test"].get("by_type") or {}).items():
                        types.setdefault(t, []).append(v["auroc"])
            model_by_type = {t: _mean_std(v)[0] for t, v in types.items()}
            for line in shortcut_warnings(
                "test", first["statistics"], value, first.get("by_type"), model_by_type
            ):
                warnings.append(f"{label} ({protocol}), {display_name(model)}: {line}")
        out.append(
            {
                "protocol": protocol,
                "class_name": label,
                "statistics": first["statistics"],
                "constant": first.get("constant", {}),
                "unavailable": first.get("unavailable", {}),
                "model_auroc": model_auroc,
                "warnings": warnings,
            }
        )
    return out


def summarize(plan: Plan, rows: list[dict[str, Any]], runs: dict[Path, RunFiles] | None = None) -> Summary:
    """Mean and sample standard deviation (ddof = 1) over seeds per class; the overall mean is the
    mean of the class means, its spread the standard deviation over seeds of each seed's mean over
    the classes (seeds that cover every class). ``runs`` (:func:`~.run_files.read_runs`) shares
    the files read with the rows and figures."""
    runs = read_runs(plan) if runs is None else runs
    columns = column_order(plan)
    table: dict[str, dict[str, TableEntry]] = {}
    for model in dict.fromkeys(plan.options.models):
        table[model] = {}
        for protocol in plan.reported_protocols:
            mine = [r for r in rows if r["model"] == model and r["protocol"] == protocol]
            if not mine:
                continue
            per_class = {}
            for class_name in columns:
                key = class_name if class_name is not None else "-"
                per_class[column_label(plan, class_name)] = _stats(
                    [r["auroc"] for r in mine if r["class"] == key]
                )
            class_means = [s["mean"] for s in per_class.values() if s["mean"] is not None]
            seed_means = []
            for seed in dict.fromkeys(plan.options.seeds):
                values = [r["auroc"] for r in mine if r["seed"] == seed and not math.isnan(r["auroc"])]
                if len(values) == len(columns):
                    seed_means.append(float(np.mean(values)))
            overall = {
                "mean": float(np.mean(class_means)) if class_means else None,
                "std": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None,
                "n_seeds": len(seed_means),
            }
            spreads = [r["auroc_std_last"] for r in mine if not math.isnan(r["auroc_std_last"])]
            table[model][protocol] = {
                "per_class": per_class,
                "overall": overall,
                "optimistic": PROTOCOL_SPECS[protocol].optimistic,
                "note": PROTOCOL_SPECS[protocol].note,
                "f1_note": PROTOCOL_SPECS[protocol].f1_note,
                "steadiness": {
                    "mean": float(np.mean(spreads)) if spreads else None,
                    "n": len(spreads),
                    "curve": mine[0]["std_curve"],
                },
            }
    reference = None
    labels = [column_label(plan, c) for c in columns]
    if plan.class_names and published.is_table_i_classes(plan.class_names):
        reference = {
            "citation": published.CITATION,
            "note": published.PROTOCOL_NOTE,
            "rows": {
                model: {
                    "label": published.ROW_LABELS[model],
                    "per_class": {c: values[c] for c in labels},
                    "mean": float(np.mean([values[c] for c in labels])),
                }
                for model, values in published.TABLE_I.items()
            },
        }
    first = plan.runs[0].config.to_dict()
    for section, key in (("data", "abnormal_class"), ("data", "normal_class"), ("data", "protocol")):
        first[section].pop(key, None)
    first["train"].pop("seed", None)
    first["model"].pop("name", None)
    first["eval"].pop("paper_each_epoch", None)
    # Wall time of each training once (its paper row shares it).
    walls = [v for v in {r["run_dir"]: r["wall_time_s"] for r in rows}.values() if not math.isnan(v)]
    return {
        "dataset": plan.dataset,
        "setting": plan.setting,
        "profile": {
            "name": plan.profile.name,
            "overrides": plan.profile.overrides,
            "replaced": plan.profile_replaced,
            "changed": plan.settings_changed,
            "note": plan.profile_note,
        },
        "models": list(dict.fromkeys(plan.options.models)),
        "classes": labels,
        "seeds": list(dict.fromkeys(plan.options.seeds)),
        "protocols": plan.reported_protocols,
        "protocol_notes": {p: PROTOCOL_SPECS[p].note for p in plan.reported_protocols},
        "trainings": len(plan.runs),
        "training_wall_time_s": float(sum(walls)) if walls else None,
        "config": first,
        "table": table,
        "published": reference,
        "package_version": __version__,
        "steady_epochs": STEADY_EPOCHS,
        "table_ii": table_ii(plan, runs),
        "shortcuts": shortcut_rows(plan, runs),
    }

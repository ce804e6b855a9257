"""Run folders -> result rows (``results.csv``) -> the Table I summary (``summary.json``).

The summary's shape is :class:`Summary` (typed dicts: ``summary.json`` is that dict as JSON).
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
from typing import Any, TypedDict

import numpy as np

from .. import __version__
from ..protocols import PAPER, PROTOCOL_SPECS
from . import published
from .run_files import RunFiles, read_runs
from .runner import Plan, RunSpec


class Stats(TypedDict):
    """Test AUROC over seeds: mean, sample standard deviation (None with one value), count, values."""

    mean: float | None
    std: float | None
    n: int
    values: list[float]


class Overall(TypedDict):
    mean: float | None  # the mean of the class means
    std: float | None  # over the seeds that cover every class, of each seed's mean
    n_seeds: int


class TableEntry(TypedDict):
    """One model under one protocol: per class (by column label) and overall."""

    per_class: dict[str, Stats]
    overall: Overall
    optimistic: bool
    note: str
    f1_note: str


class PublishedRow(TypedDict):
    label: str
    per_class: dict[str, float]
    mean: float


class Published(TypedDict):
    citation: str
    note: str
    rows: dict[str, PublishedRow]


class ProfileSummary(TypedDict):
    name: str
    overrides: dict[str, Any]
    replaced: dict[str, Any]
    changed: dict[str, Any]
    note: str


class Summary(TypedDict):
    """``summary.json``: the Table I layout of a reproduction and what produced it."""

    dataset: str
    setting: str
    profile: ProfileSummary
    models: list[str]
    classes: list[str]  # column labels, in table order
    seeds: list[int]
    protocols: list[str]
    protocol_notes: dict[str, str]
    trainings: int
    training_wall_time_s: float | None
    config: dict[str, Any]  # the first run's, less what varies between runs
    table: dict[str, dict[str, TableEntry]]  # model -> protocol -> entry
    published: Published | None  # Table I's rows, for CIFAR-10's classes
    package_version: str


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
]


def _finite(value: Any) -> float:
    return float(value) if value is not None else math.nan


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
        rows.append(
            base
            | {
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
        rows.append(
            base
            | {
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


def summarize(plan: Plan, rows: list[dict[str, Any]]) -> Summary:
    """Mean and sample standard deviation (ddof = 1) over seeds per class; the overall mean is the
    mean of the class means, its spread the standard deviation over seeds of each seed's mean over
    the classes (seeds that cover every class)."""
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
            table[model][protocol] = {
                "per_class": per_class,
                "overall": overall,
                "optimistic": PROTOCOL_SPECS[protocol].optimistic,
                "note": PROTOCOL_SPECS[protocol].note,
                "f1_note": PROTOCOL_SPECS[protocol].f1_note,
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
    }

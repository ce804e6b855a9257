"""What ``skipganomaly tune`` writes into ``--output DIR``: ``best.yaml`` (the chosen trial's whole
configuration, for ``train --config``), ``trials.csv`` and ``trials.png`` (every trial of the
study: its values, state and validation figure; no test figure), and ``summary.json``.

The test AUROC of the chosen configuration is read once, from the chosen trial's own run folder,
after the choice: it is reported under ``chosen_test`` and labelled as never used to choose. A
trial that ran on another machine has no run folder here; training ``best.yaml`` gives it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from ..runtime.files import write_bytes, write_text
from ..specs.config import build_config
from .space import Dimension

TRIAL_COLUMNS = ["number", "state", "value", "metric", "epoch", "epochs_run", "seconds", "host", "run_dir"]


def trial_rows(study, space: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial, in trial-number order: state, the selection value of its selected epoch
    (complete trials) or of its last reported epoch (pruned ones), and its searched values."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        row = {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": math.nan if value is None else float(value),
            "metric": t.user_attrs.get("metric", ""),
            "epoch": t.user_attrs.get("epoch", ""),
            "epochs_run": t.user_attrs.get("epochs_run", ""),
            "seconds": t.user_attrs.get("seconds", math.nan),
            "host": t.user_attrs.get("host", ""),
            "run_dir": t.user_attrs.get("run_dir", ""),
        }
        row.update({d.key: t.params.get(d.key, math.nan) for d in space})
        rows.append(row)
    return rows


def trials_csv(rows: list[dict[str, Any]], space: list[Dimension]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS + [d.key for d in space], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def trials_figure(rows: list[dict[str, Any]], metric: str) -> bytes | None:
    """Each trial's validation figure against its number (pruned ones as crosses at their last
    reported epoch) and the best so far; None without matplotlib (the table says it all)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(5.0, 3.2), dpi=90, layout="constrained")
    ax = fig.subplots()
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and not math.isnan(r["value"])]
    ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", ms=4, label="complete")
    ax.plot(
        [r["number"] for r in pruned], [r["value"] for r in pruned], "x", ms=5, label="pruned (last epoch)"
    )
    best, curve = -math.inf, []
    for r in done:
        best = max(best, r["value"])
        curve.append((r["number"], best))
    if curve:
        ax.step(*zip(*curve, strict=True), where="post", color="black", lw=1, label="best so far")
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel(metric or "validation figure", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def chosen_test(run_dir: str) -> dict[str, Any] | None:
    """The chosen trial's test figures from its own ``metrics.json`` (read once, after the choice)."""
    path = Path(run_dir) / "metrics.json"
    if not run_dir or not path.is_file():
        return None
    test = json.loads(path.read_text())["test"]
    return {
        "auroc": test["auroc"],
        "note": "test AUROC of the chosen configuration only, read after the choice; never used to choose",
    }


def write_outputs(study, options, space: list[Dimension]) -> dict[str, Any]:
    """Write ``trials.csv``, ``trials.png``, ``best.yaml`` and ``summary.json``; returns the summary."""
    output = Path(options.output)
    rows = trial_rows(study, space)
    metric = next((r["metric"] for r in rows if r["metric"]), "")
    write_text(output / "trials.csv", trials_csv(rows, space))
    png = trials_figure(rows, metric)
    if png is not None:
        write_bytes(output / "trials.png", png)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary: dict[str, Any] = {
        "study": options.study_name,
        "trials": counts,
        "space": [d.text for d in space],
        "selected_on": metric,
        "best": None,
        "chosen_test": None,
    }
    complete = [r for r in rows if r["state"] == "complete" and not math.isnan(r["value"])]
    if complete:
        best = study.best_trial
        config = build_config(best.user_attrs["overrides"])
        write_text(output / "best.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "metric": best.user_attrs.get("metric", ""),
            "epoch": best.user_attrs.get("epoch"),
            "params": dict(best.params),
            "run_dir": best.user_attrs.get("run_dir", ""),
        }
        summary["chosen_test"] = chosen_test(best.user_attrs.get("run_dir", ""))
    write_text(output / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary

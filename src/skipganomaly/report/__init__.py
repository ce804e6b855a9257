"""Reproducing the paper's experiments: runs, result tables, figures and HTML/Markdown reports.

``reproduce(options)`` plans one training per (model, class, seed), runs or resumes what is not
finished, and writes ``results.csv``, ``summary.json``, ``figures/``, ``report.md`` and a
self-contained ``report.html`` into ``options.output``.

The names below are imported on first use, so that importing this package (as the command line
does to list the ``--profile`` choices) does not load torch, scikit-learn or matplotlib.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_EXPORTS = {
    "PROFILE_CHOICES": "profiles",
    "resolve_profile": "profiles",
    "Plan": "runner",
    "ReproduceOptions": "runner",
    "make_plan": "runner",
    "run_plan": "runner",
    "Report": "render",
    "summary_table_text": "render",
    "write_report": "render",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def reproduce(
    options, *, progress: bool | None = None, log: Callable[[str], None] = print, verbose: bool = False
):
    """Plan, run (skipping finished runs, resuming interrupted ones) and report.

    Returns ``(plan, counts, report)``: counts of runs trained, resumed and skipped.
    """
    from .figures import require_matplotlib
    from .render import write_report
    from .runner import make_plan, run_plan

    require_matplotlib()  # fail before hours of training, not after
    plan = make_plan(options)
    counts = run_plan(plan, progress=progress, log=log, verbose=verbose)
    log(f"writing the report (tables, figures, t-SNE) into {options.output}")
    return plan, counts, write_report(plan)


__all__ = [*_EXPORTS, "reproduce"]

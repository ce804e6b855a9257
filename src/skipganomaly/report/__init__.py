"""Reproducing the paper's experiments: runs, result tables, figures and HTML/Markdown reports.

``reproduce(options)`` plans one training per (model, class, seed), runs or resumes what is not
finished, and writes ``results.csv``, ``summary.json``, ``figures/``, ``report.md`` and a
self-contained ``report.html`` into ``options.output``.
"""

from __future__ import annotations

from collections.abc import Callable

from .figures import require_matplotlib
from .profiles import PROFILE_CHOICES, resolve_profile
from .render import Report, summary_table_text, write_report
from .runner import Plan, ReproduceOptions, make_plan, run_plan


def reproduce(
    options: ReproduceOptions,
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> tuple[Plan, dict[str, int], Report]:
    """Plan, run (skipping finished runs, resuming interrupted ones) and report."""
    require_matplotlib()  # fail before hours of training, not after
    plan = make_plan(options)
    counts = run_plan(plan, progress=progress, log=log, verbose=verbose)
    report = write_report(plan)
    return plan, counts, report


__all__ = [
    "PROFILE_CHOICES",
    "Plan",
    "Report",
    "ReproduceOptions",
    "make_plan",
    "reproduce",
    "resolve_profile",
    "run_plan",
    "summary_table_text",
    "write_report",
]

"""``reproduce --sweep`` end to end: plan, run (finished runs skipped, interrupted ones resumed) and
report (:mod:`.sweep`, :mod:`.sweep_report`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .figures import require_matplotlib
from .runner import ReproduceOptions, run_plan
from .sweep import SweepAxis, SweepPlan, make_sweep_plan
from .sweep_report import write_sweep_report


def sweep(
    options: ReproduceOptions,
    axes: list[SweepAxis],
    *,
    command: str = "",
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> tuple[SweepPlan, dict[str, int], dict[str, Any]]:
    """Plan every axis value's trainings, run what is not finished, and write the report.
    Returns ``(plan, counts, summary)``."""
    require_matplotlib()  # fail before hours of training, not after
    plan = make_sweep_plan(options, axes)
    counts = run_plan(plan.run_plan, progress=progress, log=log, verbose=verbose)
    log(f"writing the sweep's report into {options.output}")
    return plan, counts, write_sweep_report(plan, command)

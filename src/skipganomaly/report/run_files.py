"""A reproduction's run folders, each file read at most once: ``metrics.json``, the test rows of
``scores.csv``, ``examples.npz`` (and its t-SNE embedding) and the losses of ``log.jsonl``.

The result table (:mod:`.results`) and the figures (:mod:`.figure_set`) read runs through
:class:`RunFiles`, so writing a report reads every file once however many places show it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .examples import load_run_examples, read_test_scores, run_tsne
from .runner import Plan, RunSpec


@dataclass(eq=False)
class RunFiles:
    """One run folder's files, each read on first use."""

    spec: RunSpec

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.spec.run_dir / "metrics.json").read_text())

    @cached_property
    def test_scores(self) -> dict[str, np.ndarray]:
        """Test rows of ``scores.csv``: index, label, scaled and raw score."""
        return read_test_scores(self.spec.run_dir)

    @cached_property
    def examples(self) -> dict[str, np.ndarray] | None:
        return load_run_examples(self.spec.run_dir)

    @cached_property
    def tsne(self) -> np.ndarray | None:
        """The t-SNE embedding of the run's subsampled features (computed once, kept beside it)."""
        return run_tsne(self.spec.run_dir, self.examples) if self.examples is not None else None

    @cached_property
    def losses(self) -> dict[str, list[tuple[float, float]]]:
        """Per-step losses of ``log.jsonl`` against fractional epochs (the last record of a step
        wins, so a resumed run's repeated steps are not drawn twice); epoch means when no step was
        logged."""
        metrics = self.metrics
        train_total = metrics["counts"]["train"]["total"]
        steps = max(train_total // max(min(self.spec.config.data.batch_size, train_total), 1), 1)
        points: dict[str, dict[float, float]] = {}
        log = self.spec.run_dir / "log.jsonl"
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


def read_runs(plan: Plan) -> dict[Path, RunFiles]:
    """Every run of ``plan`` by its folder (nothing is read until asked for)."""
    return {spec.run_dir: RunFiles(spec) for spec in plan.runs}

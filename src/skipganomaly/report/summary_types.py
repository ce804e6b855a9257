"""The shape of ``summary.json``: :class:`Summary` and the typed dicts it is made of (the file
is that dict as JSON), written by :func:`~.results.summarize` and read by the report's pages and
figures."""

from __future__ import annotations

from typing import Any, TypedDict


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


class Steadiness(TypedDict):
    """The mean over runs of each run's spread of AUROC over its last epochs (``auroc_std_last``)."""

    mean: float | None
    n: int
    curve: str  # "val" (validation), "test" (normal-only: no validation AUROC) or "paper"


class TableEntry(TypedDict):
    """One model under one protocol: per class (by column label) and overall."""

    per_class: dict[str, Stats]
    overall: Overall
    optimistic: bool
    note: str
    f1_note: str
    steadiness: Steadiness


class TableIIRow(TypedDict):
    """One row of the Table II layout: a run (or the mean over seeds) with its AUROC per anomaly
    type (normal vs that type) and overall, on its test split."""

    label: str
    model: str
    protocol: str
    class_name: str
    seed: int | None  # None: the mean over seeds
    by_type: dict[str, float | None]
    overall: float | None
    std: dict[str, float | None] | None  # over seeds, for a mean row


class TableII(TypedDict):
    types: list[str]
    rows: list[TableIIRow]


class ShortcutRow(TypedDict):
    """The trivial statistics of one test split (they depend on the split, not on the model or the
    seed) beside each model's mean test AUROC on it, and the warnings that raises."""

    protocol: str
    class_name: str
    statistics: dict[str, dict[str, Any]]
    constant: dict[str, float]
    unavailable: dict[str, str]
    model_auroc: dict[str, float | None]
    warnings: list[str]


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
    steady_epochs: int  # the steadiness columns' spread is over this many last epochs
    table_ii: TableII | None  # AUROC per anomaly type, when the runs' anomalies have named types
    shortcuts: list[ShortcutRow]  # trivial image statistics per test split

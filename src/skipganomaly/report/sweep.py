"""``reproduce --sweep``: the paper's weight study (Fig. 9), one setting varied at a time.

``--sweep KEY=V1,V2,...`` (repeatable) varies one setting over a list of values while every other
setting keeps its value, as Fig. 9 varies w_adv, w_con, w_lat and lambda one at a time. Each axis
is its own line of values; several axes are not crossed into a grid.

A setting that changes training (``train.w_con`` ...) takes one training per value, class and seed:
an ordinary :mod:`.runner` plan per value under ``OUTPUT/values/<key>_<value>/``, resumable as
``reproduce`` always is. A value equal to the base settings' reuses the base runs
(``OUTPUT/values/base/``). A setting that only changes the score from the same weights
(``eval.score_lambda``, lambda of Eq. 5) takes no training of its own: every value is scored from
the base runs' saved score parts (``scores.csv``'s R and L of each validation and test image at
the run's selected epoch; :mod:`.sweep_report`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..specs.config import build_config, flatten_keys
from ..specs.errors import UserError
from .runner import Plan, ReproduceOptions, RunSpec, config_difference, make_plan, slug

# Settings scored again from one training's saved score parts instead of trained once per value.
RESCORED_KEYS = ("eval.score_lambda",)
# The values the paper chose (Sec. IV-B), marked on the figure.
PAPER_VALUES = {"train.w_adv": 1.0, "train.w_con": 40.0, "train.w_lat": 1.0, "eval.score_lambda": 0.9}


@dataclass(frozen=True)
class SweepAxis:
    """One setting and the values it takes."""

    key: str
    values: tuple[Any, ...]

    @property
    def rescored(self) -> bool:
        """Whether every value is scored from the base runs (no training per value)."""
        return self.key in RESCORED_KEYS

    @property
    def text(self) -> str:
        return f"{self.key}={','.join(format_value(v) for v in self.values)}"


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_sweep(text: str) -> SweepAxis:
    """``KEY=V1,V2,...`` as a :class:`SweepAxis`; each value read as YAML (numbers, booleans) and
    checked as that setting's value."""
    if "=" not in text:
        raise UserError(f"--sweep {text!r}: expected KEY=V1,V2,..., e.g. --sweep train.w_con=1,10,40,100")
    key, raw = (part.strip() for part in text.split("=", 1))
    known = flatten_keys(build_config({}).to_dict())
    if key not in known:
        near = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
        hint = f"did you mean {near[0]}?" if near else "see skipganomaly configs show for the settings"
        raise UserError(f"--sweep {text!r}: {key} is not a setting; {hint}")
    values: list[Any] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            raise UserError(f"--sweep {text!r}: an empty value; list the values as {key}=V1,V2,...")
        try:
            value = yaml.safe_load(item)
        except yaml.YAMLError:
            value = item
        try:
            build_config({key: value})
        except UserError as exc:
            raise UserError(f"--sweep {text!r}: {exc}") from None
        if value in values:
            raise UserError(f"--sweep {text!r}: {item} is listed twice; list each value once")
        values.append(value)
    return SweepAxis(key, tuple(values))


def parse_sweeps(texts: list[str]) -> list[SweepAxis]:
    axes = [parse_sweep(text) for text in texts]
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UserError(f"--sweep {key} is given twice; list all its values in one --sweep")
    return axes


@dataclass
class SweepPoint:
    """One value of one axis and the runs that give its figures (its own, or the base runs)."""

    axis: SweepAxis
    value: Any
    runs: list[RunSpec]


@dataclass
class SweepPlan:
    """Every point of every axis and the trainings they need (each once)."""

    options: ReproduceOptions
    axes: list[SweepAxis]
    base: Plan  # the runs at the base settings
    points: list[SweepPoint]

    @property
    def runs(self) -> list[RunSpec]:
        """Every training, once, in order: the base runs first (when any point uses them)."""
        unique: dict[Path, RunSpec] = {}
        for point in self.points:
            for spec in point.runs:
                unique.setdefault(spec.run_dir, spec)
        return list(unique.values())

    @property
    def run_plan(self) -> Plan:
        """The runs as one :class:`~.runner.Plan` for :func:`~.runner.run_plan`."""
        return dataclasses.replace(self.base, runs=self.runs)


def _same_run(a: RunSpec, b: RunSpec) -> bool:
    return config_difference(a.config.to_dict(), b.config) == ""


def make_sweep_plan(options: ReproduceOptions, axes: list[SweepAxis]) -> SweepPlan:
    """The base plan (the options as given) and, per axis value, the runs that give its figures."""
    if not axes:
        raise UserError("--sweep needs at least one KEY=V1,V2,...")
    output = Path(options.output)
    base = make_plan(dataclasses.replace(options, output=output / "values" / "base"))
    points = []
    for axis in axes:
        if axis.key in options.user:
            raise UserError(
                f"--sweep {axis.key} is also set by --config, --set or a flag ({options.user[axis.key]}); "
                "drop one of them"
            )
        if axis.rescored:
            terms = [s for s in base.runs if getattr(s.config.model, "score_terms", "")]
            if terms:
                raise UserError(
                    f"--sweep {axis.key}: the runs score with model.score_terms="
                    f"{terms[0].config.model.score_terms!r}, which lambda of Eq. 5 does not weigh; "
                    "use --preset paper or --preset reference"
                )
            points.extend(SweepPoint(axis, value, list(base.runs)) for value in axis.values)
            continue
        for value in axis.values:
            folder = output / "values" / slug(f"{axis.key}_{format_value(value)}")
            plan = make_plan(
                dataclasses.replace(options, output=folder, user={**options.user, axis.key: value})
            )
            # A value equal to the base settings' (the preset's w_con, say) is the base run itself.
            tag = f"{axis.key}={format_value(value)}"
            runs = [
                b if _same_run(b, s) else dataclasses.replace(s, tag=tag)
                for b, s in zip(base.runs, plan.runs, strict=True)
            ]
            points.append(SweepPoint(axis, value, runs))
    return SweepPlan(options, axes, base, points)

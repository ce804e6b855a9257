"""``reproduce``: one training and evaluation per (model, class, seed), resumable, then a report.

Each training is an ordinary run folder (``Trainer``'s format) under ``OUTPUT/runs/<model>/``.
A run with ``metrics.json`` is finished and skipped; a run with ``checkpoints/last.pt`` but no
``metrics.json`` was interrupted and continues from it (same weights as an uninterrupted run).
A run folder made with other settings is never reused silently: it is reported as a conflict.

Protocols: every honest protocol asked for (``val-split``, ``normal-only``) is one training. The
``paper`` protocol needs no training of its own when an honest one is asked for too: the first
honest training also scores the paper protocol's evaluation each epoch
(``eval.paper_each_epoch``), so both figures come from the same training. Only ``--protocols
paper`` alone trains with the paper protocol itself.

Data sets and models plug in through ``data.READERS`` and ``models.MODELS`` (with the model's
spec, presets included, in ``specs.models.MODEL_SPECS``): the classes are the reader's class names,
the models any registered name.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from ..data import READERS, prepare_data
from ..data.base import Splits
from ..data.splits import resolve_class
from ..formats.checkpoint import load_checkpoint, resume_checkpoint_path
from ..models import MODELS
from ..specs.config import Config, build_config
from ..specs.errors import UserError
from ..specs.models import LOSS_WEIGHTS, MODEL_SPECS, own_keys
from ..specs.protocols import HONEST_PROTOCOLS, PAPER, PROTOCOLS
from ..training.runs import config_difference, train_run
from .examples import EXAMPLES_FILE, write_run_examples
from .profiles import Profile, resolve_profile


@dataclass
class ReproduceOptions:
    """What ``skipganomaly reproduce`` was asked for."""

    output: Path
    dataset: str = "digits"
    classes: list[str] | None = None
    one_class: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=lambda: ["skipganomaly"])
    protocols: list[str] = field(default_factory=lambda: ["val-split", "paper"])
    profile: str = "auto"
    # Flat ``section.key`` values from --config, --set and flags: they win over the profile.
    user: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSpec:
    """One training: a model, a class, a seed and the protocol it trains with."""

    model: str
    class_name: str | None
    seed: int
    protocol: str
    paper_each_epoch: bool
    config: Config
    run_dir: Path
    tag: str = ""  # what else tells it apart (a --sweep value), shown in its label

    @property
    def label(self) -> str:
        which = "" if self.class_name is None else f" class {self.class_name}"
        return f"{self.model}{which} seed {self.seed} ({self.protocol}{', ' + self.tag if self.tag else ''})"


_UNSET = object()


@dataclass
class Plan:
    options: ReproduceOptions
    profile: Profile
    dataset: str
    class_names: list[str]  # all classes of the data set ([] when it has its own split)
    classes: list[str | None]  # the classes run, in the data set's order
    setting: str
    runs: list[RunSpec]

    @property
    def profile_replaced(self) -> dict[str, Any]:
        """The profile's values that the user's settings replaced."""
        user = self.options.user
        return {k: user[k] for k, v in self.profile.overrides.items() if k in user and user[k] != v}

    @property
    def settings_changed(self) -> dict[str, Any]:
        """The user's settings that change what is trained (model, training, input size, batch)
        beyond the profile: a report must not call a run with ``model.ngf=16`` faithful."""
        shaping = {"data.image_size", "data.batch_size", "data.channels"}
        return {
            k: v
            for k, v in self.options.user.items()
            if (k.startswith(("model.", "train.")) or k in shaping)
            and self.profile.overrides.get(k, _UNSET) != v
        }

    @property
    def profile_note(self) -> str:
        changed = ", ".join(f"{k}={v}" for k, v in self.settings_changed.items())
        return self.profile.note + (f" (changed here: {changed})" if changed else "")

    @property
    def reported_protocols(self) -> list[str]:
        return [p for p in PROTOCOLS if p in self.options.protocols]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def training_protocols(protocols: list[str]) -> list[tuple[str, bool]]:
    """(protocol to train with, whether it also scores the paper protocol) for each training."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise UserError(f"protocol {unknown[0]!r} is unknown; choose from {', '.join(PROTOCOLS)}")
    honest = [p for p in HONEST_PROTOCOLS if p in protocols]
    if not honest:
        return [(PAPER.name, False)] if PAPER.name in protocols else []
    return [(p, PAPER.name in protocols and i == 0) for i, p in enumerate(honest)]


def _base_values(options: ReproduceOptions, profile: Profile) -> dict[str, Any]:
    values = dict(profile.overrides)
    values.update(options.user)
    values["data.dataset"] = options.dataset
    return values


def discover_classes(options: ReproduceOptions, base: dict[str, Any]) -> tuple[list[str], list[str | None]]:
    """(all class names of the data set, the classes to run). A data set that comes with its own
    normal/abnormal split has no classes to leave out: it is run once per seed and model."""
    if options.dataset not in READERS:
        raise UserError(f"dataset {options.dataset!r} is unknown; choose one of {', '.join(READERS)}")
    # Only the data settings matter here; the model's are checked per run.
    config = build_config(
        {k: v for k, v in base.items() if k.startswith("data.") and not k.endswith("_class")}
    )
    loaded = READERS[options.dataset](config.data)
    if isinstance(loaded, Splits):
        if options.classes:
            raise UserError(f"{options.dataset} comes with its own normal/abnormal split; drop --classes")
        return [], [None]
    option = "--classes"
    if options.classes:
        wanted = {loaded.class_names[resolve_class(loaded, str(c), option)] for c in options.classes}
        chosen = [n for n in loaded.class_names if n in wanted]
    else:
        chosen = list(loaded.class_names)
    return list(loaded.class_names), chosen


def values_for_model(base: dict[str, Any], model: str) -> dict[str, Any]:
    """The settings that apply to ``model``: with several models, a model-specific setting (say
    ``model.latent_search_steps`` of AnoGAN, or ``train.w_con``, which EGBAD has no term for)
    is meant for the models that have it, so the others leave it out."""
    spec = MODEL_SPECS.get(model)
    mine = spec.own_key_names if spec else ()
    foreign = {f"model.{k}" for k in own_keys() if k not in mine}
    if spec is not None:
        foreign |= {f"train.{w}" for w in LOSS_WEIGHTS if w not in spec.loss_weights}
    return {k: v for k, v in base.items() if k not in foreign}


def make_plan(options: ReproduceOptions) -> Plan:
    """Resolve the profile, the classes and one :class:`RunSpec` per training."""
    unknown = [m for m in options.models if m not in MODELS]
    if unknown:
        raise UserError(f"model {unknown[0]!r} is unknown; choose from {', '.join(MODELS)}")
    if not options.seeds:
        raise UserError("--seeds needs at least one seed")
    if not options.protocols:
        raise UserError("--protocols needs at least one protocol")
    trainings = training_protocols(options.protocols)
    profile = resolve_profile(options.dataset, options.profile)
    base = _base_values(options, profile)
    class_names, classes = discover_classes(options, base)
    setting = (
        "own split" if classes == [None] else ("one-class" if options.one_class else "leave-one-class-out")
    )
    runs = []
    for model in dict.fromkeys(options.models):
        for class_name in classes:
            for seed in dict.fromkeys(options.seeds):
                for protocol, paper in trainings:
                    values = values_for_model(base, model)
                    values.update(
                        {
                            "model.name": model,
                            "train.seed": int(seed),
                            "data.protocol": protocol,
                            "eval.paper_each_epoch": paper,
                        }
                    )
                    if class_name is not None:
                        values["data.normal_class" if options.one_class else "data.abnormal_class"] = (
                            class_name
                        )
                        values["data.abnormal_class" if options.one_class else "data.normal_class"] = None
                        which = f"{'normal' if options.one_class else 'abnormal'}-{slug(class_name)}-"
                    else:
                        which = ""
                    run_dir = Path(options.output) / "runs" / slug(model) / f"{protocol}-{which}seed{seed}"
                    runs.append(
                        RunSpec(model, class_name, int(seed), protocol, paper, build_config(values), run_dir)
                    )
    return Plan(options, profile, options.dataset, class_names, classes, setting, runs)


# --------------------------------------------------------------------------- run state
def run_state(spec: RunSpec) -> str:
    """``done`` (metrics.json), ``interrupted`` (a checkpoint without metrics) or ``new``."""
    if (spec.run_dir / "metrics.json").is_file():
        return "done"
    if resume_checkpoint_path(spec.run_dir) is not None:
        return "interrupted"
    return "new"


def check_reusable(spec: RunSpec) -> None:
    """Refuse to continue or reuse a run folder that was made with other settings."""
    stored_path = spec.run_dir / "config.yaml"
    if not stored_path.is_file():
        return
    difference = config_difference(yaml.safe_load(stored_path.read_text()) or {}, spec.config)
    if difference:
        raise UserError(
            f"{spec.run_dir} was made with {difference}; repeat the original settings to resume it, or choose "
            "another --output"
        )


# --------------------------------------------------------------------------- progress
def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class OverallProgress:
    """The outer bar: runs done / total, with the time left estimated from the epochs trained in
    this session (so skipped, finished runs do not make the estimate too short)."""

    def __init__(self, total: int, done: int, epochs_left: int, enabled: bool | None):
        self.started = time.perf_counter()
        self.epochs_done = 0
        self.epochs_left = epochs_left
        self.bar = tqdm(
            total=total,
            initial=done,
            unit="run",
            position=0,
            dynamic_ncols=True,
            # The description carries the time left, estimated here (see the class docstring).
            bar_format="reproduce: {n_fmt}/{total_fmt} runs |{bar}| {desc}",
            disable=None if enabled is None else not enabled,
        )
        self._refresh()

    def _refresh(self) -> None:
        elapsed = time.perf_counter() - self.started
        if self.epochs_done:
            eta = _clock(elapsed / self.epochs_done * self.epochs_left)
        else:
            eta = "?" if self.epochs_left else "0:00"
        self.bar.set_description_str(f"elapsed {_clock(elapsed)}, ETA {eta}")

    def epoch_done(self) -> None:
        self.epochs_done += 1
        self.epochs_left = max(self.epochs_left - 1, 0)
        self._refresh()

    def run_done(self) -> None:
        self.bar.update(1)
        self._refresh()

    def write(self, message: str) -> None:
        self.bar.write(message) if not self.bar.disable else print(message, flush=True)

    def close(self) -> None:
        self.bar.close()


def _epochs_left(spec: RunSpec, state: str) -> int:
    if state == "done":
        return 0
    if state == "interrupted":
        try:
            return max(
                spec.config.train.epochs - load_checkpoint(resume_checkpoint_path(spec.run_dir)).epoch, 0
            )
        except UserError:
            return spec.config.train.epochs
    return spec.config.train.epochs


# --------------------------------------------------------------------------- running
def execute_run(
    spec: RunSpec,
    state: str,
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[], None] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train (or continue) one run and write its figure data; returns its metrics."""
    check_reusable(spec)
    splits = None
    if state != "done":

        def counts(trainer) -> None:
            c = trainer.splits.counts()
            log(
                f"  {spec.label}: train {c['train']['total']:,} normal; validation "
                f"{c['val']['normal']:,}:{c['val']['abnormal']:,}; test {c['test']['normal']:,}:"
                f"{c['test']['abnormal']:,} (normal:abnormal)"
            )

        resume = load_checkpoint(resume_checkpoint_path(spec.run_dir)) if state == "interrupted" else None
        trained = train_run(
            spec.config,
            spec.run_dir,
            resume=resume,
            log=log if verbose else (lambda _: None),
            progress=progress,
            on_ready=counts if verbose else None,
            on_epoch=on_epoch,
        )
        splits, metrics = trained.splits, trained.metrics
    else:
        metrics = json.loads((spec.run_dir / "metrics.json").read_text())
    if not (spec.run_dir / EXAMPLES_FILE).is_file():
        if splits is None:
            splits = prepare_data(spec.config.data)
        write_run_examples(spec.run_dir, splits, spec.config, seed=0)
    return metrics


def run_plan(
    plan: Plan,
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> dict[str, int]:
    """Execute every run of the plan, skipping finished ones. Returns counts by what happened."""
    states = [run_state(spec) for spec in plan.runs]
    for spec, state in zip(plan.runs, states, strict=True):
        if state != "new":
            check_reusable(spec)  # fail before training anything
    counts = {"trained": 0, "resumed": 0, "skipped": 0}
    overall = OverallProgress(
        total=len(plan.runs),
        done=states.count("done"),
        epochs_left=sum(_epochs_left(s, st) for s, st in zip(plan.runs, states, strict=True)),
        enabled=progress,
    )
    write = log if overall.bar.disable else overall.write
    try:
        for number, (spec, state) in enumerate(zip(plan.runs, states, strict=True), start=1):
            started = time.perf_counter()
            metrics = execute_run(
                spec, state, progress=progress, log=write, on_epoch=overall.epoch_done, verbose=verbose
            )
            if state == "done":
                counts["skipped"] += 1
                continue
            counts["resumed" if state == "interrupted" else "trained"] += 1
            overall.run_done()
            paper = metrics.get("paper_protocol")
            shortcut_count = len((metrics.get("shortcuts") or {}).get("warnings") or [])
            write(
                f"[{number}/{len(plan.runs)}] {spec.label}: test AUROC {metrics['test']['auroc']:.3f} "
                f"(epoch {metrics['epoch_best']})"
                + (
                    f"; paper protocol {paper['auroc']:.3f} (OPTIMISTIC, epoch {paper['epoch']})"
                    if paper
                    else ""
                )
                + (f"; SHORTCUT WARNING ({shortcut_count}, see the report)" if shortcut_count else "")
                + f"; {time.perf_counter() - started:.0f} s"
            )
    finally:
        overall.close()
    return counts

"""``skipganomaly tune``: an Optuna study of trainings, each trial one ordinary run folder under
``OUTPUT/trials/``, its value what the run selects its epoch on.

The value of a trial is the selection value of its selected epoch (``Trainer.best``): the
labelled validation AUROC under val-split (``val.auroc``), the synthetic validation AUROC under
normal-only once the normal-only detector gives one (any selection metric named ``*.auroc``). A
run that selects on anything else (the mean normal score, the latest epoch) cannot rank trials,
so tune refuses it. Trials are pruned on the per-epoch curve of that value (``on_record`` of
:func:`~skipganomaly.training.runs.train_run`). Nothing here reads a test label or a test figure
to choose; the test AUROC of the chosen trial is read once, after the study, and labelled so.

Several processes (on several machines, with a database server's URL) share one study through its
storage. Each claims a trial only while fewer than ``trials`` are counted (failed trials are not
counted, and are retried); with SQLite the count and the claim are one step under a file lock
beside the database, so the study ends with exactly ``trials`` trials, each number once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..specs.config import build_config
from ..specs.errors import UserError
from .space import Dimension

STUDY_NAME = "tune"


def require_optuna():
    """The ``optuna`` module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UserError(
            "tune needs Optuna, which is not installed; install it with: pip install 'skipganomaly[tune]'"
        ) from None
    return optuna


def check_selection_metric(metric: str, protocol: str) -> None:
    """Refuse a run whose epoch selection is not an AUROC: its value cannot rank trials."""
    if not metric.endswith(".auroc"):
        raise UserError(
            f"tune ranks trials by a validation AUROC, but this run selects on {metric} (--protocol {protocol}); "
            "normal-only tuning needs the synthetic validation: a standardised score (the improved or restoring "
            "preset) with eval.selection_metric auto or synthetic, or use --protocol val-split"
        )


@dataclass
class TuneOptions:
    """What ``skipganomaly tune`` was asked for."""

    output: Path
    user: dict[str, Any]  # flat section.key values from --config, --set and the flags
    space: list[Dimension]
    trials: int
    storage: str | None = None  # default: sqlite:///OUTPUT/study.db
    study_name: str = STUDY_NAME
    seed: int = 0  # the sampler's
    prune: bool = True
    log: Callable[[str], None] = field(default=print)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output / 'study.db').resolve()}"


class Pruned(Exception):
    """Raised from a trial's epoch hook to stop its training."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for any other storage)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) and url != prefix + ":memory:" else None


@contextlib.contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """Hold a lock that makes counting and claiming a trial one step for processes on this
    machine sharing a SQLite file; nothing for a database server (see the module's docstring)."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trial_overrides(options: TuneOptions, params: dict[str, Any]) -> dict[str, Any]:
    """The flat settings of one trial: the user's, then the trial's values (they win)."""
    return {**options.user, **params}


def open_study(options: TuneOptions):
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = sqlite_path(options.storage_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Epochs are reported from 1: a trial below the median of the earlier ones may stop after its
    # first epoch, once 3 trials have finished.
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        if options.prune
        else optuna.pruners.NopPruner()
    )
    try:
        # Two processes creating one SQLite file's tables at once collide: one at a time.
        with claim_lock(options.storage_url):
            return optuna.create_study(
                storage=options.storage_url,
                study_name=options.study_name,
                direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=options.seed),
                pruner=pruner,
                load_if_exists=True,
            )
    except (ImportError, ValueError) as exc:
        raise UserError(f"--storage {options.storage_url}: {exc}".splitlines()[0]) from None


def _reap_dead_trials(study, host: str) -> None:
    """Mark failed the running trials of this machine whose process is gone (killed), so they are
    run again instead of counting forever."""
    optuna = require_optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _alive(int(attrs.get("pid", -1))):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_trial(study, options: TuneOptions):
    """A new trial of the study, or None once ``options.trials`` trials are counted."""
    optuna = require_optuna()
    with claim_lock(options.storage_url):
        counted = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.FAIL]
        if len(counted) >= options.trials:
            return None
        return study.ask()


def run_trial(study, trial, options: TuneOptions) -> None:
    """Train one trial's run and tell the study its value (or that it was pruned)."""
    from ..training.runs import train_run

    optuna = require_optuna()
    params = {d.key: d.suggest(trial) for d in options.space}
    overrides = trial_overrides(options, params)
    run_dir = options.output / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("overrides", dict(overrides))
    started = time.perf_counter()
    try:  # whatever stops the trial, the study learns it (a failed trial is not counted)
        config = build_config(overrides)
        if run_dir.exists():  # a trial number this study gave before (its storage was replaced)
            raise UserError(
                f"{run_dir} exists already; use a new --output for a new study, or the same --storage"
            )

        def after_epoch(record: dict[str, Any]) -> None:
            metric, value = record["selection"]["metric"], record["selection"]["value"]
            check_selection_metric(metric, config.data.protocol)
            trial.report(value, record["epoch"])
            trial.set_user_attr("epochs_run", record["epoch"])
            # After the last epoch there is nothing left to save: the trial completes with its value.
            if record["epoch"] < config.train.epochs and trial.should_prune():
                raise Pruned(record["epoch"])

        trained = train_run(config, run_dir, log=lambda _line: None, progress=False, on_record=after_epoch)
    except Pruned as pruned:
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        options.log(f"trial {trial.number}: {describe_params(params)}: pruned after epoch {pruned.args[0]}")
        return
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    best = trained.trainer.best
    trial.set_user_attr("seconds", time.perf_counter() - started)
    trial.set_user_attr("metric", best.metric)
    trial.set_user_attr("epoch", best.epoch)
    study.tell(trial, best.value)
    options.log(
        f"trial {trial.number}: {describe_params(params)}: {best.metric} {best.value:.4f} (epoch {best.epoch})"
    )


def describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {v:.4g}" for k, v in params.items())


def check_before_training(options: TuneOptions) -> None:
    """What can be refused before the first trial: an explicit selection that is not an AUROC."""
    config = build_config(options.user)
    if config.eval.selection_metric in ("loss", "last"):
        check_selection_metric(
            {"loss": "val.mean_normal_score", "last": "epoch"}[config.eval.selection_metric],
            config.data.protocol,
        )
    if options.trials < 1:
        raise UserError(f"--trials {options.trials}: give at least 1")


def tune(options: TuneOptions):
    """Run trials until the study holds ``options.trials`` of them; returns the study."""
    check_before_training(options)
    study = open_study(options)
    _reap_dead_trials(study, socket.gethostname())
    while (trial := claim_trial(study, options)) is not None:
        run_trial(study, trial, options)
    return study

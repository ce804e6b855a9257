"""``skipganomaly tune``: the loss weights, learning rate and lambda searched on validation (Optuna)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..specs.errors import UserError
from .options import TRAIN_FLAGS, TRAIN_ONLY_FLAGS, add_common, add_run_settings, user_settings

NAME = "tune"


def add_parser(verbs) -> None:
    tune = verbs.add_parser(
        NAME,
        help="search the loss weights, learning rate and lambda on validation (needs skipganomaly[tune])",
        description=(
            "Train --trials runs with settings an Optuna study proposes (by default lr, the model's loss "
            "weights and lambda of Eq. 5, except those you set), each ranked by the validation figure it "
            "selects its epoch on, poor ones pruned from their per-epoch curve; no test label is read to "
            "choose. Writes OUTPUT/best.yaml (for train --config), trials.csv, trials.png, summary.json "
            "and each trial's run folder under OUTPUT/trials/. Several tune processes with the same "
            "--storage (and --output on a shared disk, or their own) share one study; rerunning continues it."
        ),
    )
    add_run_settings(
        tune,
        {"epochs": "default 15; every trial trains this many, unless pruned"},
        every_run=" for every trial",
    )
    what = tune.add_argument_group("what to train")
    for flag in TRAIN_ONLY_FLAGS:
        what.add_argument(flag.name, help=flag.help, **flag.options)
    which = what.add_mutually_exclusive_group()
    which.add_argument("--abnormal-class", metavar="NAME", help="leave-one-class-out: this class is abnormal")
    which.add_argument(
        "--normal-class", metavar="NAME", help="one-class: this class is normal, all others abnormal"
    )
    study = tune.add_argument_group("the study")
    study.add_argument(
        "--trials", type=int, required=True, metavar="N", help="trials in the study (all processes together)"
    )
    study.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log]",
        help="search this setting in this range instead of the default space (repeatable)",
    )
    study.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL shared by several tune processes, e.g. sqlite:///study.db or "
        "postgresql://user@host/db (default: sqlite:///OUTPUT/study.db)",
    )
    study.add_argument(
        "--study-name", default="tune", metavar="NAME", help="the study's name in the storage (default tune)"
    )
    study.add_argument(
        "--sampler-seed", type=int, default=0, metavar="S", help="the sampler's seed (default 0)"
    )
    study.add_argument("--no-prune", action="store_true", help="train every trial to its last epoch")
    tune.add_argument(
        "--output", required=True, metavar="DIR", help="where best.yaml, the table and the trials go"
    )
    tune.add_argument("--quiet", action="store_true", help="print only the summary, not a line per trial")
    add_common(tune)


def run(args: argparse.Namespace) -> int:
    from ..specs.config import build_config
    from ..tuning.outputs import write_outputs
    from ..tuning.space import search_space
    from ..tuning.study import TuneOptions, require_optuna, tune

    require_optuna()
    user = user_settings(args, TRAIN_FLAGS)
    if args.abnormal_class is not None:
        user["data.normal_class"] = None
    if args.normal_class is not None:
        user["data.abnormal_class"] = None
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; choose a folder")
    space = search_space(build_config(user), user, args.search)
    options = TuneOptions(
        output=output,
        user=user,
        space=space,
        trials=args.trials,
        storage=args.storage,
        study_name=args.study_name,
        seed=args.sampler_seed,
        prune=not args.no_prune,
        log=(lambda _line: None) if args.quiet else print,
    )
    print(
        f"searching {'; '.join(d.text for d in space)}; {args.trials} trials in study {args.study_name!r} at {options.storage_url}"
    )
    try:
        study = tune(options)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue the study (trials in {output} are kept)")
        return 130
    summary = write_outputs(study, options, space)
    best = summary["best"]
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    print(f"study {args.study_name!r}: {counts}")
    if best is None:
        print("no trial completed; nothing chosen")
        return 0
    params = ", ".join(f"{k} {v:.4g}" for k, v in best["params"].items())
    print(
        f"chosen: trial {best['number']} ({params}): {best['metric']} {best['value']:.4f} at epoch {best['epoch']}"
    )
    if summary["chosen_test"] is not None:
        print(
            f"test AUROC of the chosen configuration (reported once, never used to choose): "
            f"{summary['chosen_test']['auroc']:.4f}"
        )
    print(
        f"wrote {output / 'best.yaml'} (train it with: skipganomaly train --config {output / 'best.yaml'}), trials.csv, summary.json"
    )
    return 0

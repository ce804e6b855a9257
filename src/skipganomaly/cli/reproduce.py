"""``skipganomaly reproduce``: every class x seed x model trained and evaluated, and the report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..specs.protocols import PROTOCOLS
from .options import REPRODUCE_FLAGS, add_common, add_run_settings, user_settings

NAME = "reproduce"


def add_parser(verbs) -> None:
    from ..report.profiles import PROFILE_CHOICES

    reproduce = verbs.add_parser(
        NAME,
        help="train and evaluate every class x seed x model and write a report (the paper's Table I)",
        description=(
            "One training and evaluation per (model, abnormal class, seed), each an ordinary run folder under "
            "OUTPUT/runs/; finished runs are skipped and interrupted ones resumed, so rerunning the same "
            "command continues. Writes OUTPUT/results.csv, summary.json, figures/, report.md and a "
            "self-contained report.html. The paper protocol is scored beside the honest one within the same "
            "trainings. Settings: the data set's profile (--profile), then --config, --set and the flags."
        ),
    )
    add_run_settings(
        reproduce,
        {
            "epochs": "default: the profile's",
            "batch_size": "default: the profile's",
            "preset": "default: the profile's (reference, or paper for light digits: the paper's model)",
        },
        every_run=" for every run",
    )
    what = reproduce.add_argument_group("what to run")
    what.add_argument("--dataset", default="digits", help="data set name (default: digits)")
    what.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="classes to leave out in turn (default: every class of the data set)",
    )
    what.add_argument(
        "--one-class",
        action="store_true",
        help="treat each chosen class as the only normal class instead (one-class setting)",
    )
    what.add_argument(
        "--seeds", nargs="+", type=int, default=[0], metavar="S", help="training seeds (default: 0)"
    )
    what.add_argument(
        "--models", nargs="+", default=["skipganomaly"], metavar="NAME", help="models (default: skipganomaly)"
    )
    what.add_argument(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=["val-split", "paper"],
        metavar="P",
        help=f"protocols reported, from {', '.join(PROTOCOLS)} (default: val-split paper; paper needs no "
        "extra training beside an honest protocol)",
    )
    what.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default="auto",
        help="auto (default): the data set's default profile, light for digits, faithful otherwise; "
        "light: reduced settings to run on a small CPU; faithful: the paper's settings",
    )
    what.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="the weight study of the paper's Fig. 9: vary one setting over these values, one training per "
        "value, class and seed (eval.score_lambda is scored from the same trainings, no retraining); "
        "repeatable, each setting varied on its own; writes a figure of AUROC against the value",
    )
    reproduce.add_argument(
        "--output", metavar="DIR", help="output folder (default runs/reproduce-<dataset>); rerun to resume"
    )
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.add_argument("--verbose", action="store_true", help="also print each run's counts and epochs")
    add_common(reproduce)


def run(args: argparse.Namespace) -> int:
    from ..report import ReproduceOptions, reproduce, summary_table_text

    user = user_settings(args, REPRODUCE_FLAGS)
    output = Path(args.output) if args.output else Path("runs") / f"reproduce-{args.dataset}"
    options = ReproduceOptions(
        output=output,
        dataset=args.dataset,
        classes=args.classes,
        one_class=args.one_class,
        seeds=args.seeds,
        models=args.models,
        protocols=args.protocols,
        profile=args.profile,
        user=user,
    )
    started = time.perf_counter()
    if args.sweep:
        return _sweep(args, options, started)
    try:
        plan, counts, report = reproduce(
            options, progress=False if args.quiet else None, verbose=args.verbose
        )
    except KeyboardInterrupt:
        print(
            f"interrupted; run the same command again to continue (finished runs in {output} are kept)",
            file=sys.stderr,
        )
        return 130
    print(plan.profile_note)
    print(summary_table_text(report.summary))
    print(
        f"{len(plan.runs)} trainings: {counts['trained']} trained, {counts['resumed']} resumed, "
        f"{counts['skipped']} already finished; {time.perf_counter() - started:.0f} s"
    )
    print(
        f"wrote {output / 'results.csv'}, {output / 'summary.json'}, {output / 'report.md'}, {output / 'report.html'}"
    )
    return 0


def _sweep(args: argparse.Namespace, options, started: float) -> int:
    from ..report.sweep import parse_sweeps
    from ..report.sweep_runner import sweep

    axes = parse_sweeps(args.sweep)
    command = "skipganomaly " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        plan, counts, summary = sweep(
            options, axes, command=command, progress=False if args.quiet else None, verbose=args.verbose
        )
    except KeyboardInterrupt:
        print(
            f"interrupted; run the same command again to continue (finished runs in {options.output} are kept)",
            file=sys.stderr,
        )
        return 130
    from ..report.sweep_report import axis_finding

    print(plan.base.profile_note)
    for axis in summary["axes"]:
        for line in axis_finding(axis):
            print(line)
    print(
        f"{len(plan.runs)} trainings: {counts['trained']} trained, {counts['resumed']} resumed, "
        f"{counts['skipped']} already finished; {time.perf_counter() - started:.0f} s"
    )
    print(f"wrote {options.output / 'results.csv'}, summary.json, report.md, report.html and figures/")
    return 0

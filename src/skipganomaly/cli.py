"""Command line: ``skipganomaly train | test | predict | reproduce | benchmark``. Each verb is a thin
wrapper over the library; ``main(argv)`` returns the exit code. User errors print one line and exit
with 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .config import (
    MODEL_NAMES,
    PRESETS,
    PROTOCOLS,
    Config,
    build_config,
    flatten_keys,
    load_yaml,
    parse_override,
)
from .errors import UserError

# Dedicated flags of ``train`` and the config keys they set (they win over --config and --set).
TRAIN_FLAGS = {
    "preset": "train.preset",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "abnormal_class": "data.abnormal_class",
    "normal_class": "data.normal_class",
    "protocol": "data.protocol",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "workers": "data.workers",
    "skip_bad_images": "data.skip_bad_images",
    "cache_dir": "data.cache_dir",
    "model": "model.name",
    "epochs": "train.epochs",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UserError (one line, exit code 2)."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{self.prog}: {message} (see --help)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="skipganomaly",
        description="Skip-GANomaly: unsupervised image anomaly detection trained on normal images only.",
        epilog="Run 'skipganomaly VERB --help' for each verb's options.",
    )
    parser.add_argument("--version", action="version", version=f"skipganomaly {__version__}")
    _add_common(parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    train = verbs.add_parser(
        "train",
        help="train a model on normal images and evaluate it",
        description=(
            "Train on the normal images of a data set, select the epoch on validation, and write "
            "RUN_DIR/config.yaml, RUN_DIR/checkpoints/{best,last}.pt, RUN_DIR/metrics.json, "
            "RUN_DIR/scores.csv and RUN_DIR/log.jsonl. Values come from the dataclass defaults, the "
            "--preset, --config FILE.yaml, --set overrides, then the flags below (later wins)."
        ),
    )
    train.add_argument("--config", metavar="FILE.yaml", help="YAML file with data/model/train/eval sections")
    train.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, e.g. --set train.lr=0.0002 (repeatable)",
    )
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="training preset: paper (Sec. IV-B) or reference (official code)",
    )
    train.add_argument(
        "--dataset",
        help="digits (default: embedded, offline), cifar10, mnist, fashion-mnist, folder or mvtec (README, Data sets)",
    )
    train.add_argument(
        "--data-root",
        metavar="DIR",
        help="the data set's folder or archive (.tar.gz, .zip; unpacked once into the cache); cifar10, mnist "
        "and fashion-mnist download into the cache without it",
    )
    which = train.add_mutually_exclusive_group()
    which.add_argument(
        "--abnormal-class",
        metavar="NAME",
        help="leave-one-class-out: this class is abnormal (digits default: 0)",
    )
    which.add_argument(
        "--normal-class", metavar="NAME", help="one-class: this class is normal, all others abnormal"
    )
    train.add_argument("--protocol", choices=PROTOCOLS, help="model-selection protocol (default: val-split)")
    train.add_argument(
        "--image-size", type=int, metavar="N", help="square input size, a power of two 16..256"
    )
    train.add_argument("--batch-size", type=int, metavar="N", help="training batch size (default 64)")
    train.add_argument("--epochs", type=int, metavar="N", help="training epochs (default 15)")
    train.add_argument(
        "--seed", type=int, metavar="S", help="random seed for weights, shuffling and noise (default 0)"
    )
    train.add_argument(
        "--model",
        choices=MODEL_NAMES,
        help="skipganomaly (default) or a baseline of the paper's Table I; each gets its own preset "
        "values (README, Baselines)",
    )
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    train.add_argument(
        "--precision", choices=["fp32", "bf16", "auto"], help="arithmetic precision (default fp32)"
    )
    train.add_argument("--workers", type=int, metavar="N", help="DataLoader workers for file-backed data")
    train.add_argument("--cache-dir", metavar="DIR", help="where decoded data sets are cached")
    train.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="skip unreadable images (counted in the log) instead of stopping",
    )
    train.add_argument(
        "--output", metavar="RUN_DIR", help="run folder (default runs/<dataset>-<class>-seed<S>)"
    )
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/checkpoints/last.pt"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(train)

    test = verbs.add_parser(
        "test",
        help="re-evaluate a trained run",
        description="Re-evaluate a run's checkpoint on its validation and test sets and write metrics.json.",
    )
    test.add_argument("--run", required=True, metavar="RUN_DIR", help="the --output folder of a training run")
    test.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)"
    )
    test.add_argument(
        "--data-root", metavar="DIR", help="read the data from here instead of the path stored in the run"
    )
    test.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    test.add_argument(
        "--output", metavar="FILE.json", help="where to write the metrics (default RUN_DIR/metrics.json)"
    )
    _add_common(test)

    predict = verbs.add_parser(
        "predict",
        help="score image files and folders",
        description=(
            "Score images with a trained run and write a CSV with columns path, score, is_anomalous "
            "(and raw_score, reconstruction, latent, heatmap). Scores use the normalisation and "
            "threshold fixed at training time, so a file's score does not depend on the others."
        ),
    )
    predict.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    predict.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="the --output folder of a training run"
    )
    predict.add_argument(
        "--output",
        default="predictions.csv",
        metavar="FILE.csv",
        help="CSV to write (default predictions.csv)",
    )
    predict.add_argument(
        "--heatmaps", metavar="DIR", help="also write one anomaly-map PNG per image into DIR"
    )
    predict.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)"
    )
    predict.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    predict.add_argument(
        "--workers", type=int, default=0, metavar="N", help="DataLoader workers decoding images"
    )
    predict.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping"
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_common(predict)
    _add_reproduce(verbs)

    bench = verbs.add_parser(
        "benchmark",
        help="measure training and scoring speed, plain versus optimised",
        description=(
            "Measure training and scoring images/s and peak memory of a plain implementation (fp32, "
            "eager, the official code's procedure) and of this package's optimised one, in one "
            "process with interleaved rounds, on synthetic images; print medians and ratios."
        ),
    )
    bench.add_argument(
        "--sizes", default="32,128", metavar="N,N", help="image sizes, comma-separated (default 32,128)"
    )
    bench.add_argument("--batch-size", type=int, default=64, metavar="N", help="training batch (default 64)")
    bench.add_argument(
        "--score-batch-size", type=int, default=256, metavar="N", help="optimised scoring batch (default 256)"
    )
    bench.add_argument(
        "--steps", type=int, default=3, metavar="N", help="training steps per round (default 3)"
    )
    bench.add_argument(
        "--score-images", type=int, default=512, metavar="N", help="images scored per round (default 512)"
    )
    bench.add_argument("--repeats", type=int, default=5, metavar="N", help="timed rounds (default 5)")
    bench.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed rounds first (default 1)")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument(
        "--precision", default="auto", choices=["fp32", "bf16", "auto"], help="optimised mode's precision"
    )
    bench.add_argument(
        "--no-channels-last",
        action="store_true",
        help="optimised mode in the default memory format instead of channels_last",
    )
    bench.add_argument(
        "--threads", type=int, default=0, metavar="N", help="intra-op threads (default: all cores)"
    )
    bench.add_argument("--ngf", type=int, default=64, metavar="N", help="generator width (default 64)")
    bench.add_argument("--ndf", type=int, default=64, metavar="N", help="discriminator width (default 64)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    bench.add_argument("--json", metavar="FILE.json", help="also write the figures as JSON")
    _add_common(bench)
    return parser


# Flags of ``reproduce`` that set one config value for every run (they win over --config/--set).
REPRODUCE_FLAGS = {
    k: TRAIN_FLAGS[k]
    for k in (
        "preset",
        "data_root",
        "image_size",
        "batch_size",
        "workers",
        "skip_bad_images",
        "cache_dir",
        "epochs",
        "device",
        "precision",
    )
}


def _add_reproduce(verbs) -> None:
    from .config import PROTOCOLS
    from .report.profiles import PROFILE_CHOICES

    reproduce = verbs.add_parser(
        "reproduce",
        help="train and evaluate every class x seed x model and write a report (the paper's Table I)",
        description=(
            "One training and evaluation per (model, abnormal class, seed), each an ordinary run folder under "
            "OUTPUT/runs/; finished runs are skipped and interrupted ones resumed, so rerunning the same "
            "command continues. Writes OUTPUT/results.csv, summary.json, figures/, report.md and a "
            "self-contained report.html. The paper protocol is scored beside the honest one within the same "
            "trainings. Settings: the data set's profile (--profile), then --config, --set and the flags."
        ),
    )
    reproduce.add_argument("--dataset", default="digits", help="data set name (default: digits)")
    reproduce.add_argument("--data-root", metavar="DIR", help="where the data set's files are")
    reproduce.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="classes to leave out in turn (default: every class of the data set)",
    )
    reproduce.add_argument(
        "--one-class",
        action="store_true",
        help="treat each chosen class as the only normal class instead (one-class setting)",
    )
    reproduce.add_argument(
        "--seeds", nargs="+", type=int, default=[0], metavar="S", help="training seeds (default: 0)"
    )
    reproduce.add_argument(
        "--models", nargs="+", default=["skipganomaly"], metavar="NAME", help="models (default: skipganomaly)"
    )
    reproduce.add_argument(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=["val-split", "paper"],
        metavar="P",
        help=f"protocols reported, from {', '.join(PROTOCOLS)} (default: val-split paper; paper needs no "
        "extra training beside an honest protocol)",
    )
    reproduce.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default="auto",
        help="auto (default): the data set's default profile, light for digits, faithful otherwise; "
        "light: reduced settings to run on a small CPU; faithful: the paper's settings",
    )
    reproduce.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: the profile's)")
    reproduce.add_argument(
        "--config", metavar="FILE.yaml", help="YAML file with data/model/train/eval sections"
    )
    reproduce.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config value for every run, e.g. --set model.ngf=32 (repeatable)",
    )
    reproduce.add_argument("--preset", choices=sorted(PRESETS), help="training preset: paper or reference")
    reproduce.add_argument(
        "--image-size", type=int, metavar="N", help="square input size, a power of two 16..256"
    )
    reproduce.add_argument("--batch-size", type=int, metavar="N", help="training batch size")
    reproduce.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    reproduce.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="arithmetic precision")
    reproduce.add_argument("--workers", type=int, metavar="N", help="DataLoader workers for file-backed data")
    reproduce.add_argument("--cache-dir", metavar="DIR", help="where decoded data sets are cached")
    reproduce.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="skip unreadable images instead of stopping",
    )
    reproduce.add_argument(
        "--output", metavar="DIR", help="output folder (default runs/reproduce-<dataset>); rerun to resume"
    )
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.add_argument("--verbose", action="store_true", help="also print each run's counts and epochs")
    _add_common(reproduce)


# --------------------------------------------------------------------------- train
def user_settings(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    """The settings the user gave, in the order they win: ``--config`` file, ``--set`` values,
    then the dedicated flags (``--epochs`` ...)."""
    user: dict[str, Any] = {}
    if args.config:
        user.update(flatten_keys(load_yaml(args.config)))
    for text in args.overrides:
        key, value = parse_override(text)
        user[key] = value
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            user[key] = value
    return user


def resolve_train_config(args: argparse.Namespace) -> Config:
    user = user_settings(args, TRAIN_FLAGS)
    if args.abnormal_class is not None:
        user["data.normal_class"] = None
    if args.normal_class is not None:
        user["data.abnormal_class"] = None
    return build_config(user)


def default_run_dir(config: Config) -> Path:
    d = config.data
    which = (
        f"normal{d.normal_class}"
        if d.normal_class is not None
        else f"abnormal{d.abnormal_class or 'default'}"
    )
    model = "" if config.model.name == "skipganomaly" else f"-{config.model.name}"
    return Path("runs") / f"{d.dataset}-{which}{model}-seed{config.train.seed}"


def describe_splits(splits) -> str:
    """The data lines printed at the start of every run: what was read, how it was split, counts."""
    c = splits.counts()
    info = splits.info
    fmt = "{:,}".format
    lines = [
        f"data: {info.get('dataset')} ({info.get('setting')}); normal: {', '.join(info.get('normal_classes') or ['-'])}; "
        f"abnormal: {', '.join(info.get('abnormal_classes') or ['-'])}",
    ]
    if info.get("storage"):
        where = f" from {info['root']}" if info.get("root") else ""
        lines.append(f"images{where}: {info['storage']}")
    if info.get("skipped_bad_images"):
        named = ", ".join(info.get("skipped_files", [])[:5])
        lines.append(
            f"skipped {fmt(info['skipped_bad_images'])} unreadable images (--skip-bad-images): {named}"
        )
    pool = info.get("evaluation_pool")
    if pool:
        lines.append(f"evaluation pool: {fmt(pool['normal'])}:{fmt(pool['abnormal'])} (normal:abnormal)")
    lines.append(
        f"protocol {splits.protocol}: train {fmt(c['train']['total'])} normal images; "
        f"validation {fmt(c['val']['normal'])}:{fmt(c['val']['abnormal'])}; "
        f"test {fmt(c['test']['normal'])}:{fmt(c['test']['abnormal'])} (normal:abnormal)"
    )
    if info.get("masks"):
        lines.append(
            f"ground-truth masks: {fmt(info['masks'])} abnormal evaluation images (pixel AUROC reported)"
        )
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed

    try:
        return _train(args)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace) -> int:
    """Train in this process, or as one of the processes torchrun started (rank 0 prints)."""
    from .checkpoint import checkpoint_path, config_from_checkpoint, load_checkpoint
    from .data import prepare_data
    from .distributed import context_from_env, launched_by_torchrun
    from .trainer import Trainer

    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)

    payload = None
    if args.resume:
        run_dir = Path(args.resume)
        conflicting = [
            f"--{f.replace('_', '-')}"
            for f in TRAIN_FLAGS
            if getattr(args, f, None) not in (None, False) and f != "device"
        ]
        if args.config or args.overrides or args.output or conflicting:
            extra = ", ".join(
                conflicting
                + (["--config"] if args.config else [])
                + (["--set"] if args.overrides else [])
                + (["--output"] if args.output else [])
            )
            raise UserError(f"--resume continues {run_dir} with its stored configuration; drop {extra}")
        payload = load_checkpoint(checkpoint_path(run_dir, "last"))
        config = config_from_checkpoint(payload)
        if args.device:
            config.train.device = args.device
        if payload["epoch"] >= config.train.epochs and (run_dir / "metrics.json").exists():
            say(f"{run_dir} already finished all {config.train.epochs} epochs; nothing to resume")
            return 0
    else:
        config = resolve_train_config(args)
        run_dir = Path(args.output) if args.output else default_run_dir(config)
        if checkpoint_path(run_dir, "last").exists():
            raise UserError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --output"
            )
    started = time.perf_counter()
    context = context_from_env(config.train.device) if launched_by_torchrun() else None
    splits = prepare_data(config.data)
    say(describe_splits(splits))
    trainer = Trainer(config, splits, run_dir, progress=False if args.quiet else None, context=context)
    if payload is not None:
        trainer.restore(payload)
        say(f"resuming {run_dir} after epoch {trainer.start_epoch} of {config.train.epochs}")
    where = (
        f"{trainer.device}" if context is None else f"{context.world_size} processes ({trainer.device.type})"
    )
    if trainer.device.type == "cpu":
        plural = "" if trainer.threads == 1 else "s"
        where += f", {trainer.threads} thread{plural}" + (" each" if context is not None else "")
    say(
        f"training {config.model.name} ({config.train.preset} preset: lr {config.train.lr:g}, "
        f"w_adv {config.train.w_adv:g}, w_con {config.train.w_con:g}, w_lat {config.train.w_lat:g}) "
        f"for {config.train.epochs} epochs on {where}; run folder {run_dir}"
    )
    metrics = trainer.fit()
    if metrics is not None:
        print_summary(metrics, run_dir, time.perf_counter() - started)
    return 0


def print_summary(metrics: dict, run_dir: Path, seconds: float | None = None) -> None:
    test, val = metrics["test"], metrics["val"]
    print(
        f"test AUROC {test['auroc']:.4f} (protocol {metrics['protocol']}, epoch {metrics['epoch_best']} "
        f"selected by {metrics['selection']}; validation AUROC {val['auroc']:.4f})"
    )
    print(
        f"test at the stored threshold {test['threshold']:.3f}: precision {test['precision']:.3f} "
        f"recall {test['recall']:.3f} F1 {test['f1']:.3f}; AUPRC {test['auprc']:.4f}"
    )
    if "pixel_auroc" in test:
        print(f"test pixel AUROC {test['pixel_auroc']:.4f} over {test['pixel_images']} images with masks")
    paper = metrics.get("paper_style")
    if paper and metrics["protocol"] != "paper":
        print(
            f"paper-style (optimistic, epoch chosen on test): test AUROC {paper['test_auroc']:.4f} at epoch {paper['epoch']}"
        )
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    print(f"wrote {run_dir / 'metrics.json'}{took}")


# --------------------------------------------------------------------------- test
def cmd_test(args: argparse.Namespace) -> int:
    from .checkpoint import checkpoint_path, config_from_checkpoint, load_checkpoint, model_from_checkpoint
    from .data import prepare_data
    from .evaluate import add_pixel_metrics, score_splits
    from .files import write_json
    from .objective import ScoreNormalization
    from .runtime import resolve_device, resolve_precision
    from .trainer import build_metrics

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the --output folder of a training run")
    payload = load_checkpoint(checkpoint_path(run_dir, args.checkpoint))
    config = config_from_checkpoint(payload)
    if args.data_root:
        config.data.root = args.data_root
    device = resolve_device(args.device)
    amp_dtype = resolve_precision(config.train.precision, device)
    model = model_from_checkpoint(payload).to(device)
    splits = prepare_data(config.data)
    print(describe_splits(splits))
    val, test = score_splits(model, splits, config, device, amp_dtype)
    normalization = ScoreNormalization.from_dict(payload["normalization"])
    metrics = build_metrics(config, splits, val, test, normalization, payload, payload["history"])
    add_pixel_metrics(metrics, model, splits, config, device, amp_dtype)
    metrics["checkpoint"] = args.checkpoint
    output = Path(args.output) if args.output else run_dir / "metrics.json"
    if output.exists() and not args.output:
        previous = json.loads(output.read_text())
        metrics["wall_time_s"] = previous.get("wall_time_s")
    write_json(output, metrics)
    print_summary(metrics, output.parent if not args.output else output)
    return 0


# --------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Predictor, predict_to_csv

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: use 1 or more")
    predictor = Predictor.from_run(args.run, args.checkpoint, args.device)
    output = Path(args.output)
    heatmaps = Path(args.heatmaps) if args.heatmaps else None
    counts = predict_to_csv(
        predictor, args.paths, output, heatmaps, args.batch_size, args.workers, args.skip_bad_images
    )
    skipped = f", {counts['skipped']} unreadable skipped" if counts["skipped"] else ""
    print(
        f"scored {counts['scored']} images: {counts['anomalous']} anomalous at threshold "
        f"{predictor.normalization.threshold:.3f}{skipped}; wrote {output}"
        + (f" and heatmaps in {heatmaps}" if heatmaps else "")
    )
    return 0


# --------------------------------------------------------------------------- reproduce
def cmd_reproduce(args: argparse.Namespace) -> int:
    from .report import ReproduceOptions, reproduce, summary_table_text

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


# --------------------------------------------------------------------------- benchmark
def cmd_benchmark(args: argparse.Namespace) -> int:
    try:
        sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sizes {args.sizes!r}: give image sizes like 32,128") from None
    for size in sizes:
        if size < 16 or size > 256 or size & (size - 1):
            raise UserError(f"--sizes: {size} is not a power of two from 16 to 256")
    for name in ("batch_size", "score_batch_size", "steps", "score_images", "repeats", "ngf", "ndf"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.batch_size < 2:
        raise UserError("--batch-size must be at least 2 (BatchNorm needs a batch)")
    from .benchmark import BenchmarkSettings, run_benchmark
    from .files import write_json

    settings = BenchmarkSettings(
        sizes=sizes,
        batch_size=args.batch_size,
        score_batch_size=args.score_batch_size,
        steps=args.steps,
        score_images=args.score_images,
        repeats=args.repeats,
        warmup=max(args.warmup, 0),
        device=args.device,
        precision=args.precision,
        channels_last=not args.no_channels_last,
        threads=max(args.threads, 0),
        ngf=args.ngf,
        ndf=args.ndf,
        memory=not args.no_memory,
    )
    report = run_benchmark(settings)
    if args.json:
        write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "test": cmd_test,
    "predict": cmd_predict,
    "reproduce": cmd_reproduce,
    "benchmark": cmd_benchmark,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.verb:
            parser.print_help()
            return 2
        return COMMANDS[args.verb](args)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; a training run continues with 'skipganomaly train --resume RUN_DIR'",
            file=sys.stderr,
        )
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()

"""Command line: ``skipganomaly train | test | predict | export | serve | reproduce | benchmark |
configs``. Each verb
is a thin wrapper over the library; ``main(argv)`` returns the exit code. User errors print one
line and exit with 2 (``--debug`` shows the traceback).

Importing this module stays light (no torch): each verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from ..specs.bundled_configs import bundled_configs, description, find_config
from ..specs.config import (
    Config,
    DataConfig,
    TrainConfig,
    build_config,
    flatten_keys,
    load_yaml,
    parse_override,
)
from ..specs.errors import UserError
from ..specs.models import MODEL_NAMES, preset_names
from ..specs.protocols import PROTOCOLS


class Flag(NamedTuple):
    """A command-line flag that sets one config key (it wins over --config and --set)."""

    name: str
    key: str
    help: str
    options: dict[str, Any] = {}  # more argparse options: type, metavar, choices, action

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


_N = {"type": int, "metavar": "N"}
# The settings flags ``train`` and ``reproduce`` share; a verb appends its default to the help.
RUN_SETTING_FLAGS = (
    Flag(
        "--preset",
        "train.preset",
        "training preset: improved (Skip-GANomaly's default: weight average, rotation task, score terms "
        "chosen on validation), reference (the official code) or paper (Sec. IV-B); each model with "
        "its own values",
        {"choices": preset_names()},
    ),
    Flag(
        "--data-root",
        "data.root",
        "the data set's folder or archive (.tar.gz, .zip; unpacked once into the cache); cifar10, mnist "
        "and fashion-mnist download into the cache without it",
        {"metavar": "DIR"},
    ),
    Flag("--image-size", "data.image_size", "square input size, a power of two 16..256", _N),
    Flag("--batch-size", "data.batch_size", "training batch size", _N),
    Flag("--epochs", "train.epochs", "training epochs", _N),
    Flag("--device", "train.device", "auto, cpu, cuda or cuda:N (default auto)"),
    Flag("--precision", "train.precision", "arithmetic precision", {"choices": ["fp32", "bf16", "auto"]}),
    Flag("--workers", "data.workers", "DataLoader workers for file-backed data", _N),
    Flag("--cache-dir", "data.cache_dir", "where decoded data sets are cached", {"metavar": "DIR"}),
    Flag(
        "--skip-bad-images",
        "data.skip_bad_images",
        "skip unreadable images (counted in the log) instead of stopping",
        {"action": "store_true", "default": None},
    ),
    Flag(
        "--max-image-pixels",
        "data.max_image_pixels",
        "an image file with more pixels is a bad image: refused, or skipped with --skip-bad-images "
        f"(default {DataConfig.max_image_pixels:,}, Pillow's own limit)",
        _N,
    ),
)
# The flags of ``train`` alone.
TRAIN_ONLY_FLAGS = (
    Flag(
        "--dataset",
        "data.dataset",
        "digits (default: embedded, offline), cifar10, mnist, fashion-mnist, folder or mvtec (docs/datasets.md)",
    ),
    Flag(
        "--protocol", "data.protocol", "model-selection protocol (default: val-split)", {"choices": PROTOCOLS}
    ),
    Flag(
        "--seed",
        "train.seed",
        "random seed for weights, shuffling and noise (default 0)",
        {"type": int, "metavar": "S"},
    ),
    Flag(
        "--model",
        "model.name",
        "skipganomaly (default) or a baseline of the paper's Table I; each gets its own preset values "
        "(docs/baselines.md)",
        {"choices": MODEL_NAMES},
    ),
)
CLASS_FLAGS = {"abnormal_class": "data.abnormal_class", "normal_class": "data.normal_class"}
# Flag dest -> the config key it sets.
REPRODUCE_FLAGS = {flag.dest: flag.key for flag in RUN_SETTING_FLAGS}
TRAIN_FLAGS = {**REPRODUCE_FLAGS, **{flag.dest: flag.key for flag in TRAIN_ONLY_FLAGS}, **CLASS_FLAGS}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UserError (one line, exit code 2)."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{self.prog}: {message} (see --help)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _add_run_settings(parser: argparse.ArgumentParser, defaults: dict[str, str], every_run: str = "") -> None:
    """The flag group ``train`` and ``reproduce`` share: --config, --set and the settings flags.
    ``defaults`` adds a verb's default to a flag's help; ``every_run`` says to whom --set applies."""
    group = parser.add_argument_group("settings (later wins: defaults, preset, --config, --set, these flags)")
    group.add_argument(
        "--config",
        metavar="FILE_OR_NAME",
        help="YAML file with data/model/train/eval sections, or the name of a bundled config "
        "('skipganomaly configs' lists them)",
    )
    group.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"override one config value{every_run}, e.g. --set train.lr=0.0002 (repeatable)",
    )
    for flag in RUN_SETTING_FLAGS:
        extra = defaults.get(flag.dest)
        group.add_argument(flag.name, help=flag.help + (f" ({extra})" if extra else ""), **flag.options)


def _add_trained_run(parser: argparse.ArgumentParser) -> None:
    """The flags of the verbs that use a trained run (``test``, ``predict``): which run, which of
    its checkpoints, which device."""
    parser.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="the --output folder of a training run"
    )
    parser.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _add_train(verbs) -> None:
    train = verbs.add_parser(
        "train",
        help="train a model on normal images and evaluate it",
        description=(
            "Train on the normal images of a data set, select the epoch on validation, and write "
            "RUN_DIR/config.yaml, RUN_DIR/checkpoints/{best,last}.pt, RUN_DIR/metrics.json, "
            "RUN_DIR/scores.csv and RUN_DIR/log.jsonl. Values come from the dataclass defaults, the "
            "--preset, --config FILE.yaml or bundled NAME, --set overrides, then the flags below "
            "(later wins)."
        ),
    )
    _add_run_settings(
        train,
        {
            "preset": f"default {TrainConfig.preset} for Skip-GANomaly, reference for the baselines",
            "batch_size": f"default {DataConfig.batch_size}",
            "epochs": f"default {TrainConfig.epochs}",
            "precision": f"default {TrainConfig.precision}",
        },
    )
    what = train.add_argument_group("what to train")
    for flag in TRAIN_ONLY_FLAGS:
        what.add_argument(flag.name, help=flag.help, **flag.options)
    which = what.add_mutually_exclusive_group()
    which.add_argument(
        "--abnormal-class",
        metavar="NAME",
        help="leave-one-class-out: this class is abnormal (digits default: 0)",
    )
    which.add_argument(
        "--normal-class", metavar="NAME", help="one-class: this class is normal, all others abnormal"
    )
    train.add_argument(
        "--output",
        metavar="RUN_DIR",
        help="run folder (default runs/<dataset>-<class>-seed<S>); must be new or empty (an interrupted run "
        "continues with --resume)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its newest checkpoint (RUN_DIR/checkpoints/last.pt, or best.pt "
        "when last.pt is missing), or start it again from RUN_DIR/config.yaml if it stopped in its first epoch",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(train)


def _add_test(verbs) -> None:
    test = verbs.add_parser(
        "test",
        help="re-evaluate a trained run",
        description="Re-evaluate a run's checkpoint on its validation and test sets and write the metrics "
        "beside the run's training record (RUN_DIR/test-<checkpoint>.json; metrics.json stays as training "
        "wrote it).",
    )
    _add_trained_run(test)
    test.add_argument(
        "--data-root", metavar="DIR", help="read the data from here instead of the path stored in the run"
    )
    test.add_argument(
        "--output",
        metavar="FILE.json",
        help="where to write the metrics (default RUN_DIR/test-<checkpoint>.json)",
    )
    _add_common(test)


def _add_predict(verbs) -> None:
    predict = verbs.add_parser(
        "predict",
        help="score image files and folders",
        description=(
            "Score images with a trained run and write a CSV with columns path, score, is_anomalous "
            "(and raw_score, reconstruction, latent, heatmap). Scores use the normalisation and "
            "threshold fixed at training time, so a file's score does not depend on the others. Rows "
            "appear in FILE.csv.partial as images are scored; it replaces FILE.csv when all are scored, "
            "so a run that fails leaves a previous FILE.csv as it was. Images skipped with "
            "--skip-bad-images are listed in FILE.skipped.csv (path, reason)."
        ),
    )
    predict.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    _add_trained_run(predict)
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
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    predict.add_argument(
        "--workers", type=int, default=0, metavar="N", help="DataLoader workers decoding images"
    )
    predict.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images instead of stopping (listed in FILE.skipped.csv)",
    )
    predict.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="an image with more pixels is a bad image (default: the run's data.max_image_pixels)",
    )
    predict.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "onnx"],
        help="torch (default): the PyTorch model; onnx: the run's ONNX export on ONNX Runtime (exported to "
        "RUN_DIR/exports/ first when needed; --workers threads decode ahead)",
    )
    _add_common(predict)


def _add_export(verbs) -> None:
    export = verbs.add_parser(
        "export",
        help="export a trained run as one self-describing ONNX file",
        description=(
            "Export a run's checkpoint to ONNX: the model's own scoring function with the preprocessing, "
            "the deployment normalisation and the threshold, BatchNorm folded; image size, channels, "
            "preprocessing, normalisation, threshold, model, protocol, package version and a content hash "
            "in the model's metadata (docs/deployment.md). The graph is checked against the PyTorch model "
            "before it is written."
        ),
    )
    export.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="the --output folder of a training run"
    )
    export.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)"
    )
    export.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    export.add_argument(
        "--output", metavar="FILE.onnx", help="where to write (default RUN_DIR/exports/<checkpoint>.onnx)"
    )
    export.add_argument(
        "--input-type",
        default="uint8",
        choices=["uint8", "float32"],
        help="the graph's input: (N, H, W, C) uint8 (default) or float32, both in [0, 255]",
    )
    _add_common(export)


def _add_serve(verbs) -> None:
    serve = verbs.add_parser(
        "serve",
        help="HTTP scoring service with an inspection page",
        description=(
            "Serve a run (its ONNX export, made when needed) or an exported .onnx file over HTTP: "
            "POST /v1/score, GET /v1/model, GET /healthz, GET /openapi.json, API docs at /docs and the "
            "inspection page at /. Binds to 127.0.0.1 unless --host names another address; the service has "
            "no authentication, so expose it only behind a proxy that adds it (docs/deployment.md)."
        ),
    )
    which = serve.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_DIR", help="a training run folder")
    which.add_argument("--onnx", metavar="FILE.onnx", help="an exported model (needs no PyTorch)")
    serve.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="with --run: which checkpoint"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 listens on every interface)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 takes a free one)")
    serve.add_argument(
        "--threads", type=int, default=0, metavar="N", help="ONNX Runtime threads (default: all cores)"
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=32, metavar="MB", help="largest request body (default 32)"
    )
    serve.add_argument(
        "--max-images", type=int, default=64, metavar="N", help="images per request (default 64)"
    )
    serve.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        metavar="N",
        help="width x height of one image, checked before decoding (default 40,000,000)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=64, metavar="N", help="images per model call (default 64)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_common(serve)


def _add_reproduce(verbs) -> None:
    from ..report.profiles import PROFILE_CHOICES

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
    _add_run_settings(
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
    reproduce.add_argument(
        "--output", metavar="DIR", help="output folder (default runs/reproduce-<dataset>); rerun to resume"
    )
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.add_argument("--verbose", action="store_true", help="also print each run's counts and epochs")
    _add_common(reproduce)


def _add_benchmark(verbs) -> None:
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
    bench.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="run N busy processes beside the measurement (a shared machine; stopped at the end)",
    )
    bench.add_argument(
        "--busy-kind",
        default="spin",
        choices=["spin", "train"],
        help="what each busy process does: spin one core, or train the model on one thread (default spin)",
    )
    bench.add_argument("--json", metavar="FILE.json", help="also write the figures as JSON")
    _add_common(bench)


def _add_configs(verbs) -> None:
    configs = verbs.add_parser(
        "configs",
        help="list the bundled configs (use one with --config NAME)",
        description="List the configurations shipped with the package, one line each: the name to pass "
        "to --config and what it is.",
    )
    _add_common(configs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="skipganomaly",
        description="Skip-GANomaly: unsupervised image anomaly detection trained on normal images only.",
        epilog="Run 'skipganomaly VERB --help' for each verb's options.",
    )
    parser.add_argument("--version", action="version", version=f"skipganomaly {__version__}")
    _add_common(parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for add in (
        _add_train,
        _add_test,
        _add_predict,
        _add_export,
        _add_serve,
        _add_reproduce,
        _add_benchmark,
        _add_configs,
    ):
        add(verbs)
    return parser


# --------------------------------------------------------------------------- train
def user_settings(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    """The settings the user gave, in the order they win: ``--config`` (a file or a bundled
    config's name), ``--set`` values, then the dedicated flags (``--epochs`` ...)."""
    user: dict[str, Any] = {}
    if args.config:
        user.update(flatten_keys(load_yaml(find_config(args.config))))
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


def cmd_train(args: argparse.Namespace) -> int:
    from ..runtime import distributed

    try:
        return _train(args)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace) -> int:
    """Train in this process, or as one of the processes torchrun started (rank 0 prints)."""
    from ..runtime.distributed import context_from_env, launched_by_torchrun
    from ..runtime.files import check_output_folder
    from ..training.runs import check_new_run_folder, describe_training, resume_point, train_run

    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)

    resume, note = None, ""
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
        resume, config, note = resume_point(run_dir)
        check_output_folder(run_dir, "--resume")
        if args.device:
            config.train.device = args.device
        if resume is not None and resume.epoch >= config.train.epochs and (run_dir / "metrics.json").exists():
            say(f"{run_dir} already finished all {config.train.epochs} epochs; nothing to resume")
            return 0
    else:
        config = resolve_train_config(args)
        run_dir = Path(args.output) if args.output else default_run_dir(config)
        # Before any data is read: a folder that cannot be written, or that holds anything but
        # this run's own start, is refused (nothing of the user's is ever written over).
        check_output_folder(run_dir, "--output")
        check_new_run_folder(run_dir, config)
    started = time.perf_counter()
    context = context_from_env(config.train.device) if launched_by_torchrun() else None

    def announce(trainer) -> None:
        say(trainer.splits.describe())
        if note:
            say(note)
        if resume is not None:
            say(f"resuming {run_dir} after epoch {trainer.start_epoch} of {config.train.epochs}")
        say(describe_training(trainer, run_dir))

    try:
        trained = train_run(
            config,
            run_dir,
            resume=resume,
            progress=False if args.quiet else None,
            context=context,
            on_ready=announce,
        )
    except Exception as exc:
        failed = _write_failure(exc, run_dir)
        if failed is None:
            raise
        raise UserError(f"{failed}; {_continue_hint(run_dir)}") from None
    if trained.metrics is not None:
        print_summary(trained.metrics, run_dir / "metrics.json", time.perf_counter() - started)
    return 0


def _write_failure(exc: BaseException, where: Path):
    """``exc`` as a one-line failed write (a full disk, a read-only file system) naming the file,
    or ``where`` when the error does not say; None for any other error."""
    from ..runtime.files import storage_failure

    filename = getattr(exc, "filename", None)
    return storage_failure(Path(filename) if filename else where, exc)


def _continue_hint(run_dir: Path) -> str:
    """What to do after a training stopped by a failed write: what is on disk is intact."""
    from ..formats.checkpoint import resume_checkpoint_path

    if resume_checkpoint_path(run_dir) is not None or (run_dir / "config.yaml").is_file():
        return f"the files written so far are intact; continue with skipganomaly train --resume {run_dir}"
    return "nothing was written; run the same command again"


def _selection_phrase(metrics: dict) -> str:
    """How the epoch was chosen, with the value it was chosen on (older metrics.json: the name)."""
    chosen = metrics.get("selected_on")
    val_auroc = metrics["val"]["auroc"]
    if not chosen:
        return f"selected by {metrics['selection']}; validation AUROC {val_auroc:.4f}"
    if chosen["metric"] == "val.auroc":
        return f"selected by validation AUROC {chosen['value']:.4f}"
    text = f"selected by the {chosen['title']}, {chosen['value']:.4f} ({chosen['better']} is better)"
    if val_auroc is None or val_auroc != val_auroc:  # NaN: validation holds no anomalies
        return text + "; validation holds no anomalies, so it has no AUROC"
    return text + f"; validation AUROC {val_auroc:.4f}"


def by_type_lines(split: dict, name: str = "test") -> list[str]:
    """The paper's Table II layout for one split: AUROC per anomaly type and overall."""
    by_type = split.get("by_type")
    if not by_type:
        return []
    width = max(len("overall"), *(len(k) for k in by_type))
    flagged = "threshold" in split
    lines = [
        f"{name} AUROC by anomaly type (normal vs that type; Table II layout):",
        f"  {'type':<{width}}  AUROC      n" + ("  flagged" if flagged else ""),
    ]
    for kind, entry in by_type.items():
        recall = f"  {entry['recall']:7.3f}" if flagged and "recall" in entry else ""
        lines.append(f"  {kind:<{width}}  {entry['auroc']:.3f}  {entry['n_abnormal']:5d}{recall}")
    overall = f"  {split['recall']:7.3f}" if flagged else ""
    lines.append(f"  {'overall':<{width}}  {split['auroc']:.3f}  {split['n_abnormal']:5d}{overall}")
    return lines


def shortcut_lines(metrics: dict) -> list[str]:
    """The trivial statistics' AUROC on the test split, and the warning block when one raises it."""
    from ..scoring.shortcuts import TITLES, warning_block

    section = metrics.get("shortcuts")
    if not section:
        return []
    lines = []
    test = section.get("test")
    if test and test["statistics"]:
        lines.append(
            f"test AUROC of trivial image statistics alone, beside the model's {metrics['test']['auroc']:.4f} "
            "(below 0.5: they separate the other way):"
        )
        width = max(len(TITLES.get(n, n)) for n in test["statistics"])
        for name, stat in test["statistics"].items():
            lines.append(
                f"  {TITLES.get(name, name):<{width}}  {stat['auroc']:.3f}  (separability "
                f"{stat['separability']:.3f}, {stat['direction']})"
            )
    warnings = section.get("warnings") or []
    if warnings:
        # The test split's lines in full (its figure is the one reported); validation's counted.
        shown = [w for w in warnings if w.startswith("test")] or warnings
        rest = len(warnings) - len(shown)
        if rest:
            shown.append(f"and {rest} on the validation split (metrics.json: shortcuts.warnings)")
        lines.append(warning_block(shown))
    return lines


def print_summary(metrics: dict, written: Path, seconds: float | None = None) -> None:
    """The figures of ``metrics`` and the file they were written to."""
    test = metrics["test"]
    print(
        f"test AUROC {test['auroc']:.4f} (protocol {metrics['protocol']}, epoch {metrics['epoch_best']} "
        f"{_selection_phrase(metrics)})"
    )
    fpr = f"; normal test images flagged {test['fpr']:.3f}" if "fpr" in test else ""
    if "fpr_target" in test:
        fpr += f" (the threshold, a quantile of validation normals, targets {test['fpr_target']:.3f})"
    print(
        f"test at the stored threshold {test['threshold']:.3f}: precision {test['precision']:.3f} "
        f"recall {test['recall']:.3f} F1 {test['f1']:.3f}{fpr}; AUPRC {test['auprc']:.4f}"
    )
    for line in by_type_lines(test):
        print(line)
    if "pixel_auroc" in test:
        print(f"test pixel AUROC {test['pixel_auroc']:.4f} over {test['pixel_images']} images with masks")
    steadiness = (metrics.get("steadiness") or {}).get("val_auroc")
    if steadiness and steadiness["epochs"] > 1:
        print(
            f"validation AUROC over the last {steadiness['epochs']} epochs: std {steadiness['std']:.4f}, "
            f"range {steadiness['range']:.4f}"
        )
    paper = metrics.get("paper_style")
    if paper and metrics["protocol"] != "paper":
        print(
            f"paper-style (optimistic, epoch chosen on test): test AUROC {paper['test_auroc']:.4f} at epoch {paper['epoch']}"
        )
    for line in shortcut_lines(metrics):
        print(line)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    print(f"wrote {written}{took}")


# --------------------------------------------------------------------------- test
def test_results_path(run_dir: Path, which: str) -> Path:
    """Where ``skipganomaly test`` writes by default: beside the run's training record."""
    return run_dir / f"test-{which}.json"


def cmd_test(args: argparse.Namespace) -> int:
    import torch

    from ..data import prepare_data
    from ..evaluation.record import evaluate_run
    from ..formats.checkpoint import load_run_checkpoint
    from ..runtime.device import resolve_device
    from ..runtime.files import check_output_file, write_json
    from ..runtime.precision import resolve_precision

    run_dir = Path(args.run)
    if args.output:
        output = Path(args.output)
        check_output_file(output, "--output", "metrics.json")
        if output.absolute() == (run_dir / "metrics.json").absolute() or (
            output.exists()
            and (run_dir / "metrics.json").exists()
            and output.samefile(run_dir / "metrics.json")
        ):
            raise UserError(
                f"--output {output} is the run's training record, which test never rewrites; choose another file"
            )
    else:
        output = test_results_path(run_dir, args.checkpoint)
        if run_dir.is_dir() and not os.access(run_dir, os.W_OK | os.X_OK):
            raise UserError(
                f"--run {run_dir} is not writable, so the results cannot go beside it; pass --output FILE.json"
            )
    checkpoint = load_run_checkpoint(run_dir, args.checkpoint)
    config = checkpoint.config
    if args.data_root:
        config.data.root = args.data_root
    device = resolve_device(args.device)
    amp_dtype = resolve_precision(config.train.precision, device)
    model = checkpoint.build_model().to(device)
    if config.train.channels_last:  # as the trainer and predict score: the same kernels, the same numbers
        model = model.to(memory_format=torch.channels_last)
    splits = prepare_data(config.data)
    print(splits.describe())
    metrics = evaluate_run(checkpoint, splits, config, device, amp_dtype, model=model).metrics
    metrics["checkpoint"] = args.checkpoint
    metrics["content_hash"] = checkpoint.content_hash
    write_json(output, metrics)
    print_summary(metrics, output)
    return 0


# --------------------------------------------------------------------------- configs
def cmd_configs(args: argparse.Namespace) -> int:
    configs = bundled_configs()
    width = max(len(name) for name in configs)
    for name, file in configs.items():
        print(f"{name:<{width}}  {description(file)}")
    return 0


# --------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from ..deploy.predict import Predictor, predict_to_csv, skipped_list_path
    from ..runtime.files import WriteError, check_output_file, check_output_folder, partial_path

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: use 1 or more")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise UserError(f"--max-image-pixels {args.max_image_pixels}: use a positive number")
    output = Path(args.output)
    heatmaps = Path(args.heatmaps) if args.heatmaps else None
    # Before the model is loaded or any image read.
    check_output_file(output, "--output", "predictions.csv")
    if heatmaps is not None:
        check_output_folder(heatmaps, "--heatmaps")
    if args.engine == "onnx":
        from ..deploy.detector import Detector

        predictor = Detector.from_run(
            args.run, args.checkpoint, engine="onnx", max_image_pixels=args.max_image_pixels
        )
    else:
        predictor = Predictor.from_run(args.run, args.checkpoint, args.device, args.max_image_pixels)
    previous = output.exists()
    try:
        counts = predict_to_csv(
            predictor, args.paths, output, heatmaps, args.batch_size, args.workers, args.skip_bad_images
        )
    except WriteError as exc:
        kept = f"{output} is unchanged" if previous else f"{output} was not written"
        raise UserError(f"{exc}; {kept}") from None
    except KeyboardInterrupt:
        print(
            f"interrupted; the rows scored so far are in {partial_path(output)}, and {output} is unchanged",
            file=sys.stderr,
        )
        return 130
    skipped = ""
    if counts["skipped"]:
        first = counts["skipped_files"][0][0] if counts["skipped_files"] else "?"
        skipped = (
            f", {counts['skipped']} unreadable skipped ({first}"
            + (" and others" if counts["skipped"] > 1 else "")
            + f"; listed in {skipped_list_path(output)})"
        )
    print(
        f"scored {counts['scored']} images: {counts['anomalous']} anomalous at threshold "
        f"{predictor.normalization.threshold:.3f}{skipped}; wrote {output}"
        + (f" and heatmaps in {heatmaps}" if heatmaps else "")
    )
    return 0


# --------------------------------------------------------------------------- export, serve
def cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.export import export_run

    result = export_run(args.run, args.checkpoint, args.output, args.input_type)
    m = result.metadata
    print(
        f"wrote {result.path} ({len(result.model_bytes) / 2**20:.1f} MiB): {m['model']['name']}, "
        f"{m['image_size']}x{m['image_size']}x{m['channels']} {m['input']['dtype']} input, threshold "
        f"{m['normalization']['threshold']:.4f}, protocol {m['protocol']}; "
        f"{', '.join(m['graph_rewrites'])}; raw scores match PyTorch within "
        f"{result.max_relative_difference:.1e} (relative); content SHA-256 {result.content_sha256[:16]}..."
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..deploy.detector import Detector
    from ..service import ServiceLimits, is_loopback, serve

    for name in ("max_images", "max_pixels", "max_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb {args.max_upload_mb}: use a positive size")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 0 to 65535")
    if args.onnx:
        detector = Detector.from_onnx(args.onnx, args.threads)
    else:
        from ..deploy.run_exports import exported_for_run

        detector = Detector.from_exported(
            exported_for_run(args.run, args.checkpoint, log=print), args.threads
        )
    limits = ServiceLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_images=args.max_images,
        max_image_pixels=args.max_pixels,
        max_batch=args.max_batch,
    )
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}, reachable from other machines; the service has no "
            "authentication or TLS: put it behind a proxy that adds them (docs/deployment.md)",
            file=sys.stderr,
        )

    def ready(url: str) -> None:
        info = detector.info
        print(
            f"serving {info['model']} ({info['image_size']} px, threshold {detector.threshold:.4f}, "
            f"{info.get('engine')}) on {url}: page {url}/, API docs {url}/docs; Ctrl-C stops",
            flush=True,
        )

    serve(detector, args.host, args.port, limits, args.log_level, ready=ready)
    return 0


# --------------------------------------------------------------------------- reproduce
def cmd_reproduce(args: argparse.Namespace) -> int:
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
    if not 0 <= args.busy <= 64:
        raise UserError(f"--busy {args.busy}: use 0 to 64 busy processes")
    for name in ("batch_size", "score_batch_size", "steps", "score_images", "repeats", "ngf", "ndf"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.batch_size < 2:
        raise UserError("--batch-size must be at least 2 (BatchNorm needs a batch)")
    from ..benchmark import BenchmarkSettings, run_benchmark
    from ..runtime.files import write_json

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
        busy=args.busy,
        busy_kind=args.busy_kind,
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
    "export": cmd_export,
    "serve": cmd_serve,
    "reproduce": cmd_reproduce,
    "benchmark": cmd_benchmark,
    "configs": cmd_configs,
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
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except (OSError, RuntimeError) as exc:
        # A write that failed where no caller named the file (a full disk, a read-only file
        # system): still one line. Anything else is a bug and keeps its traceback.
        failed = None if debug else _write_failure(exc, Path.cwd())
        if failed is None:
            raise
        print(f"error: {_one_line(failed)}", file=sys.stderr)
        return failed.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; a training run continues with 'skipganomaly train --resume RUN_DIR'",
            file=sys.stderr,
        )
        return 130


def _one_line(exc: BaseException) -> str:
    """An error's message as the one line the CLI promises (a message that grew more lines, such
    as one passed through another process, keeps its first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()

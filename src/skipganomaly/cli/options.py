"""What several verbs share: the settings flags and the config keys they set, the parser that
reports usage errors as ``UserError``, the flag groups of more than one verb, the user's settings
in the order they win, and a failed write or any error as the one line the CLI prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

from ..specs.bundled_configs import find_config
from ..specs.config import DataConfig, flatten_keys, load_yaml, parse_override
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


INT_ARG = {"type": int, "metavar": "N"}  # the argparse options of a flag that takes a whole number
# The settings flags ``train`` and ``reproduce`` share; a verb appends its default to the help.
RUN_SETTING_FLAGS = (
    Flag(
        "--preset",
        "train.preset",
        "training preset: improved (Skip-GANomaly's default: weight average, rotation task, score terms "
        "chosen on validation), restoring (improved, and G learns to remove synthetic anomalies while a "
        "segmentation head finds them; threshold at eval.target_fpr), reference (the official code) or "
        "paper (Sec. IV-B); each model with its own values",
        {"choices": preset_names()},
    ),
    Flag(
        "--data-root",
        "data.root",
        "the data set's folder or archive (.tar.gz, .zip; unpacked once into the cache); cifar10, mnist "
        "and fashion-mnist download into the cache without it",
        {"metavar": "DIR"},
    ),
    Flag("--image-size", "data.image_size", "square input size, a power of two 16..256", INT_ARG),
    Flag("--batch-size", "data.batch_size", "training batch size", INT_ARG),
    Flag("--epochs", "train.epochs", "training epochs", INT_ARG),
    Flag("--device", "train.device", "auto, cpu, cuda or cuda:N (default auto)"),
    Flag("--precision", "train.precision", "arithmetic precision", {"choices": ["fp32", "bf16", "auto"]}),
    Flag("--workers", "data.workers", "DataLoader workers for file-backed data", INT_ARG),
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
        INT_ARG,
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


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UserError (one line, exit code 2)."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{self.prog}: {message} (see --help)")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def add_run_settings(parser: argparse.ArgumentParser, defaults: dict[str, str], every_run: str = "") -> None:
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


def add_trained_run(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The flags of the verbs that use a trained run (``test``, ``predict``): which run, which of
    its checkpoints, which device."""
    parser.add_argument(
        "--run", required=required, metavar="RUN_DIR", help="the --output folder of a training run"
    )
    parser.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


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


def write_failure(exc: BaseException, where: Path):
    """``exc`` as a one-line failed write (a full disk, a read-only file system) naming the file,
    or ``where`` when the error does not say; None for any other error."""
    from ..runtime.files import storage_failure

    filename = getattr(exc, "filename", None)
    return storage_failure(Path(filename) if filename else where, exc)


def one_line(exc: BaseException) -> str:
    """An error's message as the one line the CLI promises (a message that grew more lines, such
    as one passed through another process, keeps its first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__

"""Command line: ``skipganomaly train | test | predict | export | serve | reproduce | tune |
benchmark | configs``. Each verb is a thin wrapper over the library; ``main(argv)`` returns the exit code.
User errors print one line and exit with 2 (``--debug`` shows the traceback).

Importing this module stays light (no torch): each verb imports what it needs when it runs.

Each verb is a module of this folder with its ``NAME``, ``add_parser(verbs)`` and ``run(args)``;
``VERBS`` lists them in the order ``--help`` shows them, so a new verb is one module and one entry.
What several verbs share is in ``options``, the printed figures of a run in ``summary``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..specs.errors import UserError
from . import benchmark, configs, export, predict, reproduce, serve, test, train, tune
from .options import Parser, add_common, one_line, write_failure
from .train import resolve_train_config

__all__ = ["VERBS", "build_parser", "entry_point", "main", "resolve_train_config"]

# The verbs, in the order the top-level help lists them.
VERBS = (train, test, predict, export, serve, reproduce, tune, benchmark, configs)
COMMANDS = {verb.NAME: verb.run for verb in VERBS}


_TRAINING_MODULES = ("torch", "sklearn", "tqdm", "onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="skipganomaly",
        description="Skip-GANomaly: unsupervised image anomaly detection trained on normal images only.",
        epilog="Run 'skipganomaly VERB --help' for each verb's options.",
    )
    parser.add_argument("--version", action="version", version=f"skipganomaly {__version__}")
    add_common(parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for verb in VERBS:
        verb.add_parser(verbs)
    return parser


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
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        # The scoring-only install has no PyTorch: the verbs that train or export need it.
        if debug or exc.name not in _TRAINING_MODULES:
            raise
        print(
            f"error: this command needs {exc.name} (not in the scoring-only install); "
            "pip install 'skipganomaly[train]' (CPU-only PyTorch: see docs/deployment.md)",
            file=sys.stderr,
        )
        return 2
    except (OSError, RuntimeError) as exc:
        # A write that failed where no caller named the file (a full disk, a read-only file
        # system): still one line. Anything else is a bug and keeps its traceback.
        failed = None if debug else write_failure(exc, Path.cwd())
        if failed is None:
            raise
        print(f"error: {one_line(failed)}", file=sys.stderr)
        return failed.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; a training run continues with 'skipganomaly train --resume RUN_DIR'",
            file=sys.stderr,
        )
        return 130


def entry_point() -> None:
    sys.exit(main())

"""``skipganomaly configs``: list the bundled configs."""

from __future__ import annotations

import argparse

from ..specs.bundled_configs import bundled_configs, description
from .options import add_common

NAME = "configs"


def add_parser(verbs) -> None:
    configs = verbs.add_parser(
        NAME,
        help="list the bundled configs (use one with --config NAME)",
        description="List the configurations shipped with the package, one line each: the name to pass "
        "to --config and what it is.",
    )
    add_common(configs)


def run(args: argparse.Namespace) -> int:
    configs = bundled_configs()
    width = max(len(name) for name in configs)
    for name, file in configs.items():
        print(f"{name:<{width}}  {description(file)}")
    return 0

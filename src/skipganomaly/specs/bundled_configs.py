"""The configurations shipped with the package: the ``*.yaml`` files of ``skipganomaly/configs/``
(package data).

``skipganomaly configs`` lists them, one line each: the name and the first comment line of the
file. ``--config NAME`` takes one by name (``--config digits-quick``), and a ``--config`` path
that does not exist but names a bundled file (``configs/digits-quick.yaml``, as a clone of the
repository once had it) is the bundled one, so the same commands work from a clone and from an
installed package. An existing file always wins over a bundled name.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SUFFIX = ".yaml"
FOLDER = "configs"  # under the package, beside the code


def bundled_configs() -> dict[str, Traversable]:
    """Every bundled config by name (the file name without ``.yaml``), sorted."""
    files = [
        f
        for f in resources.files("skipganomaly").joinpath(FOLDER).iterdir()
        if f.name.endswith(SUFFIX) and f.is_file()
    ]
    return {f.name[: -len(SUFFIX)]: f for f in sorted(files, key=lambda f: f.name)}


def description(config: Traversable) -> str:
    """The first comment line of a config file: what it is, in one line."""
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_config(value: str | os.PathLike) -> Path | Traversable:
    """The file ``--config VALUE`` means: an existing file, else the bundled config named by the
    value or by the value's file name; otherwise a UserError naming the value and the choices."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"config file {value} is a folder; pass a YAML file to --config")
    name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    bundled = bundled_configs()
    if name in bundled and path.suffix in ("", SUFFIX):
        return bundled[name]
    raise UserError(
        f"config file {value} does not exist; pass an existing YAML file or a bundled config name: "
        f"{', '.join(bundled)} (skipganomaly configs lists them)"
    )

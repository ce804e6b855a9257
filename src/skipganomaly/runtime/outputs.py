"""Which files an output may replace: the rule every verb applies before it does any work.

* An output never replaces a file the same call reads (an image being scored, the checkpoint
  being exported), not even with ``--overwrite``: the result would be computed from a file it
  destroys.
* An existing file at an output path is replaced only when it is the verb's own earlier output
  of the same kind (a predictions CSV, an anomaly-map PNG this package wrote, an export), which
  each verb recognises by its content, not its name. Any other file is refused with one line
  unless the user passes ``--overwrite``.

No PyTorch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..specs.errors import UserError


def _identity(path: Path) -> tuple[int, int] | str:
    """What makes two names the same file: the inode where the file exists, else its resolved
    path (hard links, symbolic links and ``..`` all compare equal)."""
    try:
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return str(path.resolve())


class InputSet:
    """The files a call reads, to be compared with its outputs by identity."""

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self._ids = {_identity(Path(p)) for p in paths}

    def __contains__(self, path: str | os.PathLike) -> bool:
        return _identity(Path(path)) in self._ids


def refuse_input(path: str | os.PathLike, inputs: InputSet, option: str) -> None:
    """A UserError when ``path`` is one of the files the call reads."""
    if path in inputs:
        raise UserError(
            f"{option} {path} is one of the files this command reads; it never replaces an input: "
            f"choose another {option}"
        )


def check_replaceable(
    path: str | os.PathLike, option: str, is_own: Callable[[Path], bool], kind: str, overwrite: bool
) -> None:
    """A UserError when ``path`` exists, is not this verb's own earlier ``kind`` and the user did
    not pass ``--overwrite``."""
    path = Path(path)
    if overwrite or not path.exists() or path.is_dir():
        return
    try:
        own = is_own(path)
    except (OSError, ValueError):
        own = False
    if not own:
        raise UserError(
            f"{option}: {path} exists and is not {kind} written by skipganomaly; "
            "choose another path, or pass --overwrite to replace it"
        )


def first_line(path: Path, limit: int = 4096) -> str:
    """The first line of a file (at most ``limit`` bytes), '' for an empty one."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")


def csv_with_header(prefix: str, allow_empty: bool = False) -> Callable[[Path], bool]:
    """An ``is_own`` test: a CSV whose header starts with ``prefix`` (or an empty file)."""

    def test(path: Path) -> bool:
        if allow_empty and path.stat().st_size == 0:
            return True
        return first_line(path).startswith(prefix)

    return test


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """An ``is_own`` test: a JSON object (under 64 MiB) holding every one of ``keys``."""

    def test(path: Path) -> bool:
        if path.stat().st_size > 64 << 20:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and all(key in data for key in keys)

    return test

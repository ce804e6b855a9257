"""Atomic writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write) -> None:
    """Write a file through ``write(handle)`` (a binary handle): complete or absent."""
    _atomic(Path(path), write)


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic(Path(path), lambda handle: handle.write(data))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    _atomic(Path(path), lambda handle: torch.save(obj, handle))

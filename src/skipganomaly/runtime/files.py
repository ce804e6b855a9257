"""Writing files without losing any: atomic writes (a file is complete or absent), output paths
checked before any work, write failures (a full disk, a read-only folder) as one line, and the
temporary files of writes a kill cut short cleaned from the folders they were left in; and the
package's cache folder (:func:`cache_root`), which the data readers and the precision probe share.
No PyTorch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..specs.errors import UserError

if TYPE_CHECKING:
    from ..specs.config import DataConfig

# What a failed write tells the user to do, by the reason the system gave.
_WRITE_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EROFS: "the file system is read-only; choose a folder you can write to",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.EFBIG: "the file is too large for this file system",
    errno.EIO: "an input/output error (a failing disk or network share)",
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# The temporary names of atomic writes: ``.NAME.XXXXXXXX.tmp`` (tempfile.mkstemp's 8 characters).
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class WriteError(UserError, OSError):
    """A file could not be written: names the file and the reason in one line. Also an OSError,
    so code that carries on without an optional file (the decoded-array cache) still does."""

    def __init__(self, path: str | os.PathLike, reason: str, code: int | None = None):
        UserError.__init__(self, f"cannot write {path}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.code = code
        self.errno, self.strerror, self.filename = code, reason, str(path)

    @property
    def disk_full(self) -> bool:
        return self.code in DISK_FULL

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or what torch's writer wraps as a RuntimeError
    ("[enforce fail at inline_container.cc] ... unexpected pos", "file write failed")."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        seen += 1
    return None


def write_error(path: str | os.PathLike, exc: BaseException) -> WriteError | None:
    """``exc`` as a :class:`WriteError` naming ``path``, when it is a failed write: an OSError, or
    torch's RuntimeError around one (``torch.save`` on a full disk). None for anything else."""
    if isinstance(exc, WriteError):
        return exc
    if isinstance(exc, UserError):  # already one line of its own (a bad image is not a write)
        return None
    found = _os_error_in(exc)
    if found is None:
        text = str(exc)
        if isinstance(exc, RuntimeError) and ("enforce fail" in text or "file write failed" in text):
            return WriteError(path, "the write failed (is the disk full?)")
        return None
    if found.errno in _WRITE_HINTS:
        return WriteError(path, _WRITE_HINTS[found.errno], found.errno)
    return WriteError(path, found.strerror or type(found).__name__, found.errno)


def storage_failure(path: str | os.PathLike, exc: BaseException) -> WriteError | None:
    """``exc`` as a :class:`WriteError` when it can only be a failed write whatever raised it: a
    full disk, a quota, a read-only file system, a file too large, or torch's "enforce fail" of a
    write; None for anything else (then it is not ours to reword)."""
    if isinstance(exc, WriteError):
        return exc
    found = _os_error_in(exc)
    if found is not None and found.errno not in (*DISK_FULL, errno.EROFS, errno.EFBIG):
        return None
    return write_error(path, exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write, sync: bool = True) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        failed = write_error(path, exc) if isinstance(exc, Exception) else None
        if failed is not None:
            raise failed from None
        raise


def write_atomic(path: str | os.PathLike, write, sync: bool = True) -> None:
    """Write a file through ``write(handle)`` (a binary handle): complete or absent. ``sync``
    flushes it to the disk before the rename (off for many small files one can write again)."""
    _atomic(Path(path), write, sync)


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic(Path(path), lambda handle: handle.write(data))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    # Imported here: the scoring-only install (ONNX Runtime, no PyTorch) also writes files.
    import torch

    _atomic(Path(path), lambda handle: torch.save(obj, handle))


def partial_path(path: str | os.PathLike) -> Path:
    """Where :func:`streamed_file` writes ``path`` until it is complete: ``PATH.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def streamed_file(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text file written bit by bit (rows as they are computed) that replaces ``path`` only
    when complete. The writing goes to ``PATH.partial`` beside it, which can be read while it
    grows; on success it is flushed to disk and renamed to ``path`` in one step. On an error the
    partial file is removed and ``path``, if it existed, is untouched. On Ctrl-C the partial file
    is kept (it holds the rows written so far) and ``path`` is untouched too."""
    path = Path(path)
    partial = partial_path(path)
    try:
        handle = open(partial, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise write_error(partial, exc) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        with contextlib.suppress(OSError):
            handle.close()  # may fail again flushing on a full disk; the file goes anyway
        partial.unlink(missing_ok=True)
        failed = write_error(partial, exc) if isinstance(exc, Exception) else None
        if failed is not None:
            raise failed from None
        raise


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is the temporary name of an atomic write (``.NAME.XXXXXXXX.tmp``)."""
    return bool(_TEMP_NAME.match(name))


def remove_orphan_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXXXXXX.tmp``) that atomic writes killed before their
    rename left in ``folder``; only that pattern, only files; with ``name``, only the temporaries
    of that one file. Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if name is not None and not entry.name.startswith(f".{name}."):
            continue
        if is_temporary_name(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


# --------------------------------------------------------------------------- output paths
def _first_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_can_create_in(path: Path, option: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable folder."""
    ancestor = _first_existing(path.absolute().parent)
    if not ancestor.is_dir():
        raise UserError(f"{option} {path}: {ancestor} is a file, not a folder; choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(
            f"{option} {path}: cannot create it in {ancestor} (not writable); choose another {option}"
        )


def check_output_folder(path: str | os.PathLike, option: str = "--output") -> None:
    """Refuse, before any work, a folder that cannot be created or written: a file in its place or
    above it, or a folder without write permission (or on a read-only file system)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{option} {path} is a file, not a folder; choose another {option}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path} is not writable; choose another {option}")
        return
    _check_can_create_in(path, option)


def check_output_file(path: str | os.PathLike, option: str = "--output", example: str = "out.csv") -> None:
    """Refuse, before any work, a file path that cannot be written: a folder in its place, a file
    above it, or a folder without write permission."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name, e.g. {option} {path / example}")
    if path.exists():
        if not os.access(path.absolute().parent, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: its folder is not writable; choose another {option}")
        return
    _check_can_create_in(path, option)


# The cache folder (layout: data/cache.py): data.cache_dir, else this variable, else ~/.cache.
CACHE_ENV = "SKIPGANOMALY_CACHE"


def cache_root(cfg: DataConfig | None = None) -> Path:
    """The cache directory for this configuration (not created here)."""
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "skipganomaly"

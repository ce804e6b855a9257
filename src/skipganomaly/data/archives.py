"""Unpacking a data set archive (.tar.gz, .tgz, .tar, .zip) once into the cache.

The archive is unpacked into a temporary folder beside its final place and renamed when every
member is out, so the final folder is either complete or absent: a truncated or corrupt archive
gives one error line and leaves nothing behind. Only regular files and folders are unpacked: an
archive holding a link (symbolic or hard), a device, a fifo, or a path that would land outside
the folder is refused with one line naming that member. So is one whose unpacked files would
exceed ``data.max_unpacked_bytes``, ``data.max_unpacked_files`` or ``data.max_unpack_ratio``
times the archive's own size (a "zip bomb": a small archive that unpacks into gigabytes); bytes
are counted as they are written, not taken from the archive's own headers. Later runs reuse the
folder as long as the archive's path, size and modification time are unchanged.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat as stat_module
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from ..runtime.files import cache_root, write_error
from ..specs.config import DataConfig
from ..specs.errors import UserError
from .cache import key_of

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
SKIPPED_PREFIXES = ("__MACOSX/",)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_relative(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path inside the target folder, None for members we skip, or an error for one
    that would escape the folder."""
    if name.startswith(SKIPPED_PREFIXES) or "/._" in f"/{name}":
        return None
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise UserError(f"archive {archive} holds the unsafe path {name!r}; refusing to unpack it")
    parts = [p for p in relative.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


class _Budget:
    """The unpacked bytes and files an archive may produce (see the module's docstring)."""

    CHUNK = 1 << 20

    def __init__(self, archive: Path, cfg: DataConfig):
        self.archive = archive
        size = archive.stat().st_size
        by_ratio = int(cfg.max_unpack_ratio * max(size, 1))
        self.max_bytes = min(cfg.max_unpacked_bytes, by_ratio)
        self.why = (
            f"data.max_unpacked_bytes={cfg.max_unpacked_bytes:,}"
            if cfg.max_unpacked_bytes <= by_ratio
            else f"data.max_unpack_ratio={cfg.max_unpack_ratio:g} times its {size:,} bytes"
        )
        self.max_files = cfg.max_unpacked_files
        self.bytes = 0
        self.files = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise UserError(
                f"archive {self.archive} holds more than {self.max_files:,} files (data.max_unpacked_files); "
                "refusing to unpack it; raise the limit with --set data.max_unpacked_files=N if it is right"
            )

    def copy(self, source: IO[bytes], out: Path, name: str) -> None:
        with open(out, "wb") as handle:
            while chunk := source.read(self.CHUNK):
                self.bytes += len(chunk)
                if self.bytes > self.max_bytes:
                    raise UserError(
                        f"archive {self.archive} unpacks into more than {self.max_bytes:,} bytes ({self.why}; "
                        f"reached at {name!r}); refusing to unpack it; raise the limit with --set if it is right"
                    )
                handle.write(chunk)


def _refuse_member(archive: Path, name: str, what: str) -> UserError:
    return UserError(
        f"archive {archive} holds {what} {name!r}; links and special files are never unpacked, so it is "
        "refused: replace the member by the file itself and pack the archive again"
    )


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    return "a special member"


def _unpack_tar(archive: Path, target: Path, budget: _Budget) -> int:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            relative = _safe_relative(member.name, archive)
            if relative is None:
                continue
            if not (member.isfile() or member.isdir()):
                raise _refuse_member(archive, member.name, _tar_kind(member))
            out = target.joinpath(*relative.parts)
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            budget.add_file(member.name)
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source:
                budget.copy(source, out, member.name)
    return budget.files


def _unpack_zip(archive: Path, target: Path, budget: _Budget) -> int:
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            relative = _safe_relative(info.filename, archive)
            if relative is None:
                continue
            # The Unix file type, where the zip was made on Unix (0 where it was not, or where the
            # writer stored permissions only, as Python's zipfile does).
            kind = stat_module.S_IFMT(info.external_attr >> 16)
            if kind and kind not in (stat_module.S_IFREG, stat_module.S_IFDIR):
                what = "a symbolic link" if kind == stat_module.S_IFLNK else "a special file"
                raise _refuse_member(archive, info.filename, what)
            out = target.joinpath(*relative.parts)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            budget.add_file(info.filename)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as source:
                budget.copy(source, out, info.filename)
    return budget.files


def _remove_stale_partials(target: Path) -> None:
    """Remove what killed unpackings of the same archive left (``.NAME.partial-PID`` folders whose
    process is gone)."""
    if not target.parent.is_dir():
        return
    for folder in target.parent.glob(f".{target.name}.partial-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # a process of another user: alive


def unpack_archive(archive: Path, cfg: DataConfig) -> Path:
    """The folder holding ``archive``'s contents in the cache, unpacking it the first time."""
    archive = Path(archive)
    stat = archive.stat()
    key = key_of(archive.resolve(), stat.st_size, stat.st_mtime_ns)
    target = cache_root(cfg) / "extracted" / f"{archive_stem(archive)}-{key}"
    if target.is_dir():
        return target
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    _remove_stale_partials(target)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        print(f"unpacking {archive} into {target} (once)", flush=True)
        is_zip = archive.name.lower().endswith(".zip")
        budget = _Budget(archive, cfg)
        count = _unpack_zip(archive, partial, budget) if is_zip else _unpack_tar(archive, partial, budget)
        if count == 0:
            raise UserError(f"archive {archive} holds no files")
        try:
            os.replace(partial, target)
        except OSError:
            if not target.is_dir():  # not a concurrent run that finished first
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"archive {archive} is truncated or corrupt ({reason}); download or copy it again"
        ) from None
    except OSError as exc:  # a full disk or an unwritable cache: nothing is left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise write_error(partial, exc) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target

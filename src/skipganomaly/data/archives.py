"""Unpacking a data set archive (.tar.gz, .tgz, .tar, .zip) once into the cache.

The archive is unpacked into a temporary folder beside its final place and renamed when every
member is out, so the final folder is either complete or absent: a truncated or corrupt archive
gives one error line and leaves nothing behind. Only regular files and folders are unpacked;
links, devices and paths that would land outside the folder are refused. Later runs reuse the
folder as long as the archive's path, size and modification time are unchanged.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..config import DataConfig
from ..errors import UserError
from .cache import cache_root, key_of

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


def _unpack_tar(archive: Path, target: Path) -> int:
    count = 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            relative = _safe_relative(member.name, archive)
            if relative is None or not (member.isfile() or member.isdir()):
                continue  # links, devices and fifos are never unpacked
            out = target.joinpath(*relative.parts)
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with source, open(out, "wb") as handle:
                shutil.copyfileobj(source, handle)
            count += 1
    return count


def _unpack_zip(archive: Path, target: Path) -> int:
    count = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            relative = _safe_relative(info.filename, archive)
            if relative is None:
                continue
            out = target.joinpath(*relative.parts)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as source, open(out, "wb") as handle:
                shutil.copyfileobj(source, handle)
            count += 1
    return count


def unpack_archive(archive: Path, cfg: DataConfig) -> Path:
    """The folder holding ``archive``'s contents in the cache, unpacking it the first time."""
    archive = Path(archive)
    stat = archive.stat()
    key = key_of(archive.resolve(), stat.st_size, stat.st_mtime_ns)
    target = cache_root(cfg) / "extracted" / f"{archive_stem(archive)}-{key}"
    if target.is_dir():
        return target
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        print(f"unpacking {archive} into {target} (once)", flush=True)
        is_zip = archive.name.lower().endswith(".zip")
        count = _unpack_zip(archive, partial) if is_zip else _unpack_tar(archive, partial)
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
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target

"""Downloading official data files into the cache, verified by checksum.

A file is fetched to a temporary name beside its target, its MD5 compared with the published
one, and only then renamed into place: a failed, interrupted or corrupted download leaves
nothing behind. Mirrors are tried in order. Without network access the error says where to put
the file by hand.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..specs.errors import UserError

TIMEOUT_S = 30
CHUNK = 1 << 20


class ChecksumError(UserError):
    """A file whose checksum differs from the published one."""


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, md5: str) -> None:
    """Download ``url`` to ``target`` through a temporary file; raise on network or checksum errors."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "skipganomaly"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}", disable=None
            ) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        found = md5sum(tmp)
        if found != md5:
            raise ChecksumError(f"checksum mismatch: md5 {found}, expected {md5}; discarded")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(urls: list[str], target: Path, md5: str, *, allowed: bool, what: str) -> Path:
    """Make sure ``target`` holds the official file, downloading it from ``urls`` when absent.

    An existing file with the wrong checksum (e.g. an earlier download cut short by hand) is
    replaced. ``allowed`` False (``data.download: false``) turns a missing file into an error
    saying where to put it.
    """
    if target.is_file():
        if md5sum(target) == md5:
            return target
        if not allowed:
            raise ChecksumError(
                f"{target} failed its checksum (expected md5 {md5}); delete it and download {what} again"
            )
    if not allowed:
        raise UserError(
            f"{what} is not in {target.parent} and downloads are off (data.download=false); "
            f"put {target.name} there by hand or pass --data-root"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    reasons, checksum_failed = [], False
    for url in urls:
        try:
            _fetch(url, target, md5)
            return target
        except ChecksumError as exc:
            checksum_failed = True
            reasons.append(f"{url}: {exc}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reasons.append(f"{url}: {str(reason).splitlines()[0] if str(reason) else type(exc).__name__}")
    hint = "a server sent a different file: try again later, " if checksum_failed else "offline? "
    error = ChecksumError if checksum_failed else UserError
    raise error(
        f"cannot download {what} ({'; '.join(reasons)}); {hint}copy {target.name} into "
        f"{target.parent} by hand or pass --data-root"
    )

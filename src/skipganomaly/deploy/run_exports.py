"""A run's up-to-date ONNX export: the file ``export`` wrote for the checkpoint as it is now, or a
new export. Reading an existing export imports no PyTorch (the scoring-only path); exporting
again does (:mod:`.export`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..formats.onnx_file import ExportedModel, default_export_path, file_sha256, parse_exported, read_exported
from ..specs.errors import UserError


def _checkpoint_file(run_dir: Path, which: str) -> Path:
    # checkpoint.checkpoint_path's layout; that module imports PyTorch, which this path must not.
    return run_dir / "checkpoints" / f"{which}.pt"


def exported_for_run(run_dir: str | os.PathLike, which: str = "best", log=None) -> ExportedModel:
    """The run's ONNX export, read and checked: the file at :func:`default_export_path` when it was
    exported from the checkpoint as it is now (same SHA-256) by this package version (then no
    PyTorch is imported); else exported again (:mod:`skipganomaly.deploy.export`), written there when the
    folder is writable and kept in memory when it is not."""
    from .. import __version__

    run_dir = Path(run_dir)
    source = _checkpoint_file(run_dir, which)
    path = default_export_path(run_dir, which)
    if source.is_file() and path.is_file():
        try:
            existing = read_exported(path)
        except UserError:
            existing = None
        if (
            existing is not None
            and existing.metadata.get("checkpoint", {}).get("sha256") == file_sha256(source)
            and existing.metadata.get("package_version") == __version__
            and existing.quantization is None
            and existing.input.get("dtype") == "uint8"
        ):
            return existing
    from ..formats.checkpoint import load_run_checkpoint
    from ..runtime.files import remove_orphan_temporaries, write_bytes
    from .export import export_checkpoint, run_domain, run_splits, validation_images

    checkpoint = load_run_checkpoint(run_dir, which)  # a clear error for a missing run or checkpoint
    if log is not None:
        log(f"exporting {source} to ONNX ...")
    splits = run_splits(checkpoint)
    result = export_checkpoint(
        checkpoint,
        which=which,
        source=source,
        check_images=validation_images(checkpoint, splits),
        domain=run_domain(run_dir, checkpoint, splits),
    )
    remove_orphan_temporaries(path.parent, path.name)  # a killed export's litter
    try:
        write_bytes(path, result.model_bytes)
        where: Path | None = path
    except OSError:
        where = None  # a read-only run folder: score from memory
    return parse_exported(result.model_bytes, where)

"""``predict``'s CSV: files and folders scored by a :class:`~skipganomaly.deploy.predict.Predictor`
(PyTorch) or a :class:`~skipganomaly.deploy.detector.Detector` (ONNX Runtime) into rows, written as
they finish. No PyTorch is imported here (the scoring-only install writes this CSV too)."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..data.images import collect_image_paths
from ..runtime.files import partial_path, streamed_file, write_error, write_text
from ..runtime.outputs import InputSet, check_replaceable, csv_with_header, refuse_input
from ..scoring.heatmaps import is_heatmap_file, write_heatmap
from .prediction import Prediction

# Threads encoding heatmap PNGs while the next batch is decoded and scored (PNG encoding releases
# the GIL).
HEATMAP_THREADS = 2

CSV_COLUMNS = [
    "path",
    "score",
    "is_anomalous",
    "raw_score",
    "reconstruction",
    "latent",
    "heatmap",
    "out_of_domain",
    "domain_reason",
]


class SkippedImages:
    """The images skipped as unreadable: how many, and each one's (path, one-line reason)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.files: list[tuple[str, str]] = []


def unique_heatmap_name(source: str, used: set[str]) -> str:
    stem = Path(source).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        name = f"{stem}_{n}.png"
        n += 1
    used.add(name)
    return name


def skipped_list_path(output: Path) -> Path:
    """Where ``predict`` names the unreadable images it skipped: ``NAME.skipped.csv`` beside
    ``NAME.csv``."""
    return output.with_name(f"{output.stem}.skipped.csv")


_HEADER = ",".join(CSV_COLUMNS[:3])  # what every predictions CSV starts with
_SKIPPED_HEADER = "path,reason"


def plan_outputs(
    paths: list[Path], output: Path, heatmaps: Path | None, overwrite: bool = False
) -> dict[str, Path]:
    """Check every file ``predict_to_csv`` will write before any work (runtime/outputs.py): none
    is an input; an existing one is this verb's own earlier file of that kind (predictions CSV,
    its ``.partial``, the skipped list, an anomaly map) unless ``overwrite``. Returns each input's
    heatmap path (empty without ``heatmaps``): its stem, numbered past names already taken, so a
    heatmap never lands on an input or on another image's map."""
    inputs = InputSet(paths)
    files = [
        (output, "--output", csv_with_header(_HEADER), "a predictions CSV"),
        (
            partial_path(output),
            "--output",
            csv_with_header(_HEADER, allow_empty=True),
            "a partial predictions CSV",
        ),
        (skipped_list_path(output), "--output", csv_with_header(_SKIPPED_HEADER), "a skipped-images list"),
    ]
    for path, option, own, kind in files:
        refuse_input(path, inputs, option)
        check_replaceable(path, option, own, kind, overwrite)
    if heatmaps is None:
        return {}
    taken = InputSet([*paths, *(path for path, *_ in files)])
    used: set[str] = set()
    names: dict[str, Path] = {}
    for source in paths:
        while True:
            target = heatmaps / unique_heatmap_name(str(source), used)
            if target not in taken:  # an input or one of the CSVs: never a heatmap's name
                break
        check_replaceable(target, "--heatmaps", is_heatmap_file, "an anomaly map", overwrite)
        names[str(source)] = target
    return names


def predict_to_csv(
    predictor,
    inputs: list[str],
    output: Path,
    heatmaps: Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    skip_bad: bool = False,
    log=print,
    overwrite: bool = False,
) -> dict:
    """Score files and folders into a CSV. Rows are written batch by batch as they finish into
    ``OUTPUT.partial`` beside ``output``, which replaces ``output`` in one step once every image
    is scored: a run that fails leaves a previous ``output`` as it was, and the finished file
    never has a half-written row. A row is written once its heatmap is on disk; heatmaps of one
    batch are encoded by a few threads while the next batch is decoded and scored. Images skipped
    as unreadable (``skip_bad``) are named in ``NAME.skipped.csv`` (path, reason). Returns counts
    (and ``skipped_files``) for the caller to report. No file it writes replaces an input, or
    an existing file that is not its own earlier output of that kind unless ``overwrite``
    (:func:`plan_outputs`)."""
    paths = collect_image_paths(inputs)
    heatmap_paths = plan_outputs(paths, output, heatmaps, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if heatmaps is not None:
            heatmaps.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(output.parent if heatmaps is None else heatmaps, exc) from None
    counts: dict = {"scored": 0, "anomalous": 0, "skipped": 0}
    bad = SkippedImages()
    # out_of_domain: 1 or 0 where the scorer checks the domain (an export that carries it); else empty.
    checks_domain = getattr(predictor, "domain", None) is not None
    map_high = predictor.normalization.map_high

    def heatmap_job(p: Prediction, target: Path) -> None:
        size = p.size
        if size is None:  # not read from a file by the scorer: ask the file itself
            with Image.open(p.path) as original:
                size = original.size
        write_heatmap(target, p.anomaly_map, map_high, size)

    def write_rows(handle, predictions: list[Prediction], jobs: list) -> None:
        for job in jobs:
            job.result()  # re-raises a failed write
        rows = io.StringIO()
        writer = csv.writer(rows)
        for p in predictions:
            writer.writerow(
                [
                    p.path,
                    f"{p.score:.6f}",
                    int(p.is_anomalous),
                    f"{p.raw_score:.6f}",
                    f"{p.reconstruction:.6f}",
                    f"{p.latent:.6f}",
                    p.heatmap,
                    int(p.out_of_domain) if checks_domain else "",
                    p.domain_reason,
                ]
            )
        handle.write(rows.getvalue())  # one batch's whole rows at once
        handle.flush()
        for p in predictions:
            counts["scored"] += 1
            counts["anomalous"] += int(p.is_anomalous)

    pool = ThreadPoolExecutor(max_workers=HEATMAP_THREADS) if heatmaps is not None else None
    pending: tuple[list[Prediction], list] | None = None
    with streamed_file(output) as handle:
        csv.writer(handle).writerow(CSV_COLUMNS)
        try:
            for predictions, skipped in predictor.score_paths(
                paths, batch_size, heatmaps is not None, workers, skip_bad, counter=bad
            ):
                counts["skipped"] += skipped
                if pool is None:
                    write_rows(handle, predictions, [])
                    continue
                jobs = []
                for p in predictions:
                    if p.anomaly_map is not None:
                        target = heatmap_paths[p.path]
                        jobs.append(pool.submit(heatmap_job, p, target))
                        p.heatmap = str(target)
                if pending is not None:
                    write_rows(handle, *pending)
                pending = (predictions, jobs)
            if pending is not None:
                write_rows(handle, *pending)
                pending = None
        except KeyboardInterrupt:
            if pool is not None:
                pool.shutdown(wait=True)
            if pending is not None and all(job.done() and job.exception() is None for job in pending[1]):
                write_rows(handle, *pending)  # keep the batch whose heatmaps are written
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
    counts["skipped_files"] = list(bad.files)
    listed = skipped_list_path(output)
    if bad.files:
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["path", "reason"])
        writer.writerows(bad.files)
        write_text(listed, rows.getvalue())
    elif listed.is_file() and csv_with_header(_SKIPPED_HEADER)(listed):
        listed.unlink()  # a previous run's list: this output has no skipped images
    return counts

"""``Detector``: score images with an exported model on ONNX Runtime, the deployment API.

    detector = Detector.from_onnx("model.onnx")     # or Detector.from_run("runs/quickstart")
    for p in detector.score(["part.png", pil_image, numpy_array]):
        print(p.score, p.is_anomalous, p.anomaly_map.shape)

Images may be PIL images, numpy arrays (H x W, H x W x 1, H x W x 3 or H x W x 4; uint8, or
16-bit / float as a file of that kind is read), or paths of image files (a folder: every image
in it). Each is prepared as training prepared its images
(:class:`~skipganomaly.data.images.Preprocessing`: grayscale or RGB, resized to the run's size),
and scored by the exported graph, which holds the model's own score, the run's deployment
normalisation and its threshold (:mod:`skipganomaly.deploy.export`). An image's result does not depend
on what else is scored with it.

Nothing here imports PyTorch: ``Detector.from_onnx`` needs ONNX Runtime, numpy and Pillow only
(``pip install skipganomaly[serve]``). ``Detector.from_run`` exports the run first (PyTorch and
``onnx``, once: the export is kept in ``RUN_DIR/exports/``), or with ``engine="torch"`` scores
with the PyTorch model itself (on a GPU if asked).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.arrays import as_image, check_batch_size
from ..data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadImageError,
    Preprocessing,
    collect_image_paths,
    open_image,
)
from ..formats.onnx_file import ExportedModel, read_exported
from ..scoring.domain import DomainStats, SourceFacts, source_facts
from ..scoring.normalization import ScoreNormalization
from ..specs.errors import UserError
from .contract import is_term_output, leading_term, paper_composition, term_shares
from .prediction import Prediction

# What goes wrong with one image of many: it becomes that image's error (Prediction.error).
IMAGE_ERRORS = (UserError, OSError, ValueError)


# The exported model's normalisation (its metadata) is the checkpoint's, read into the same class;
# ``DeploymentScale`` is its former name here, kept for outside code.
DeploymentScale = ScoreNormalization


def to_uint8_image(reconstructed: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8, the inverse of the model input's scaling."""
    return (
        np.clip((np.asarray(reconstructed, np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
        .astype(np.uint8)
        .transpose(1, 2, 0)
    )


class OnnxEngine:
    """An exported model in an ONNX Runtime session (CPU unless ``providers`` say otherwise)."""

    def __init__(self, exported: ExportedModel, threads: int = 0, providers: Sequence[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(
                "scoring an exported model needs onnxruntime: pip install 'skipganomaly[serve]'"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads > 0 else _available_cores()
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: on shared cores a spinning thread holds a core
        # another process needs (the package sets OMP_WAIT_POLICY=PASSIVE for PyTorch likewise).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.exported = exported
        self.session = ort.InferenceSession(
            exported.model_bytes, options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_dtype = np.float32 if exported.input.get("dtype") == "float32" else np.uint8
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = options.intra_op_num_threads

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, C) images at the model's size -> the graph's outputs by name."""
        feed = {self.input_name: np.ascontiguousarray(images, dtype=self.input_dtype)}
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))


class TorchEngine:
    """A run's checkpoint scored by PyTorch itself (eval mode, the run's own scoring options), with
    the same outputs as an exported graph: for GPUs, and as the reference the parity test uses."""

    def __init__(self, run_dir: str | os.PathLike, which: str = "best", device: str = "auto"):
        from .predict import Predictor

        self.predictor = Predictor.from_run(run_dir, which, device)

    def composition(self) -> list[dict[str, Any]]:
        """How the model's score is made of its terms (:mod:`.contract`), as an export declares it."""
        from .export import score_composition

        p = self.predictor
        return score_composition(
            p.model, p._scoring_options(1, False, 0, False).score_lambda, {"anomaly_map"}
        )

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from ..data.base import ImageSet

        p = self.predictor
        image_set = ImageSet(class_ids=np.zeros(len(images), np.int64), images=np.ascontiguousarray(images))
        scored = p._score(image_set, max(1, len(images)), True, 0, False)
        score = p.normalization(scored.score)
        return {
            "score": score,
            "is_anomalous": score >= p.normalization.threshold,
            "raw_score": scored.score,
            "reconstruction": scored.reconstruction,
            "latent": scored.latent,
            "anomaly_map": scored.anomaly_maps.astype(np.float32),
            "reconstructed": scored.reconstructed.astype(np.float32),
        }


def _name(item: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else ""


def _item_error(item: Any, position: int, exc: BaseException) -> str:
    """One line: why the image at ``position`` of a call could not be scored."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, UserError):
        return message
    what = str(item) if isinstance(item, (str, os.PathLike)) else f"image {position}"
    return f"{what} cannot be decoded ({message[:200]}); it may be truncated or corrupt"


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Detector:
    """A trained detector ready to score images; see the module docstring."""

    def __init__(self, engine, info: dict[str, Any], max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.engine = engine
        self.info = info
        # Image files with more pixels are bad images (decompression bombs), as in training.
        self.max_image_pixels = max_image_pixels
        self.image_size = int(info["image_size"])
        self.channels = int(info["channels"])
        self.preprocessing = Preprocessing(self.image_size, self.channels)
        self.normalization = ScoreNormalization.from_dict(info["normalization"])
        self.threshold = self.normalization.threshold
        # How the score is made of its terms (deploy.contract); an export written before the
        # composition was declared scored with Eq. 5.
        self.terms = info.get("score_terms") or paper_composition(float(info.get("score_lambda", 0.9)))
        self.info["score_terms"] = self.terms
        # The training images' domain, when the export carries it: the out-of-domain warning.
        self.domain = DomainStats.from_dict(info["domain"]) if info.get("domain") else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        threads: int = 0,
        providers: Sequence[str] | None = None,
        max_image_pixels: int | None = None,
    ) -> Detector:
        """An exported ``.onnx`` file (``skipganomaly export``), checked against its content hash."""
        return cls.from_exported(read_exported(path), threads, providers, max_image_pixels)

    @classmethod
    def from_exported(
        cls,
        exported: ExportedModel,
        threads: int = 0,
        providers: Sequence[str] | None = None,
        max_image_pixels: int | None = None,
    ) -> Detector:
        engine = OnnxEngine(exported, threads, providers)
        info = exported.describe() | {"engine": "onnxruntime", "threads": engine.threads}
        return cls(engine, info, max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        which: str = "best",
        engine: str = "onnx",
        device: str = "auto",
        threads: int = 0,
        max_image_pixels: int | None = None,
    ) -> Detector:
        """A training run's ``best`` (or ``last``) checkpoint. ``engine="onnx"`` (default) scores
        with its ONNX export on ONNX Runtime, exporting it first when ``RUN_DIR/exports/`` has no
        export of the checkpoint as it is now; ``engine="torch"`` scores with PyTorch on
        ``device``. ``max_image_pixels``: files with more pixels are bad images (default: Pillow's
        limit)."""
        if engine == "onnx":
            from .run_exports import exported_for_run

            return cls.from_exported(exported_for_run(run_dir, which), threads, None, max_image_pixels)
        if engine == "torch":
            torch_engine = TorchEngine(run_dir, which, device)
            checkpoint = torch_engine.predictor.checkpoint
            info = {
                "model": checkpoint.model_name,
                "model_args": dict(checkpoint.model_args),
                "image_size": checkpoint.image_size,
                "channels": checkpoint.channels,
                "preprocessing": checkpoint.preprocessing.to_dict(),
                "normalization": checkpoint.normalization.to_dict(),
                "threshold": checkpoint.normalization.threshold,
                "protocol": checkpoint.protocol,
                "checkpoint": {"which": which, "epoch": checkpoint.epoch},
                "engine": f"torch ({torch_engine.predictor.device})",
                "score_terms": torch_engine.composition(),
            }
            return cls(torch_engine, info, max_image_pixels or checkpoint.config.data.max_image_pixels)
        raise UserError(f"engine {engine!r}: choose onnx or torch")

    # ------------------------------------------------------------------ preparing images
    def _source(
        self, image: Any, where: str = "the image"
    ) -> tuple[Image.Image, str, tuple[int, int] | None]:
        """One image (PIL, numpy array or file path) as a PIL image, its name and its file size;
        in-memory images checked by the rules of :mod:`skipganomaly.data.arrays` (accepted dtypes
        and values, ``max_image_pixels``), a BadImageError naming ``where`` otherwise."""
        if isinstance(image, (str, os.PathLike)):
            opened = open_image(image, self.max_image_pixels)
            return opened, str(image), opened.size
        return as_image(image, where, self.max_image_pixels), "", None

    def load(
        self, image: Any, where: str = "the image"
    ) -> tuple[np.ndarray, tuple[int, int] | None, SourceFacts]:
        """One image as the (size, size, channels) uint8 array the model scores, the file's own
        (width, height) (None for an image not read from a file) and its source's facts (for the
        out-of-domain check). Raises a UserError (or the decoder's OSError) for a bad image."""
        source, _, size = self._source(image, where)
        return self.preprocessing.prepare(source), size, source_facts(source)

    def prepare(self, image: Any, where: str = "the image") -> np.ndarray:
        """One image (PIL, numpy array or file path) as the (size, size, channels) uint8 array the
        model scores."""
        return self.load(image, where)[0]

    # ------------------------------------------------------------------ scoring
    def score_prepared(
        self,
        images: np.ndarray,
        with_maps: bool = True,
        paths: Sequence[str] | None = None,
        facts: Sequence[SourceFacts | None] | None = None,
    ) -> list[Prediction]:
        """Score prepared uint8 (N, size, size, channels) images in one batch; ``facts``: each
        image's source facts, for the out-of-domain check (None: not checked)."""
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, self.channels):
            raise UserError(
                f"prepared images must be (N, {self.image_size}, {self.image_size}, {self.channels}) uint8; "
                f"got {images.shape}"
            )
        if len(images) == 0:
            return []
        out = self.engine.run(images)
        # Only the documented outputs become parts: each term of the score by its name.
        parts_names = [name for name in out if is_term_output(name)]
        map_outputs = {t["name"]: t["map"] for t in self.terms if t.get("map") and t["map"] in out}
        results = []
        for k in range(len(images)):
            parts = {name: float(out[name][k]) for name in parts_names}
            prediction = Prediction(
                path="" if paths is None else str(paths[k]),
                score=float(out["score"][k]),
                is_anomalous=bool(out["is_anomalous"][k]),
                raw_score=float(out["raw_score"][k]),
                reconstruction=parts.get("reconstruction", float("nan")),
                latent=parts.get("latent", float("nan")),
                parts=parts,
                shares=term_shares(parts, self.terms),
            )
            if with_maps:
                prediction.anomaly_map = np.asarray(out["anomaly_map"][k], dtype=np.float32)
                prediction.reconstructed = to_uint8_image(out["reconstructed"][k])
                prediction.term_maps = {
                    term: np.asarray(out[name][k], dtype=np.float32) for term, name in map_outputs.items()
                }
            if self.domain is not None and facts is not None and facts[k] is not None:
                prediction.domain_reason = self.domain.check(images[k], facts[k])
                prediction.out_of_domain = bool(prediction.domain_reason)
            results.append(prediction)
        return results

    def leading_term(self, prediction: Prediction) -> str | None:
        """The term with the largest share of this prediction's score (the one that scores)."""
        return leading_term(prediction.shares, self.terms)

    def score(self, images: Any, with_maps: bool = True, batch_size: int = 64) -> list[Prediction]:
        """Score one image or a list of images (PIL images, numpy arrays, file paths; a folder
        path stands for every image file below it). Returns one :class:`Prediction` per image,
        in order.

        Of a list, an image that cannot be read or prepared (undecodable, truncated, too large, an
        array of the wrong kind) comes back as a :class:`Prediction` whose ``error`` says why, and
        the others are scored; a single image (not in a list) that cannot be scored raises its
        UserError, as does a bad argument of the call itself."""
        batch_size = check_batch_size(batch_size)
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        expanded: list[Any] = []
        for item in items:
            if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
                expanded.extend(collect_image_paths([item]))
            else:
                expanded.append(item)
        results: list[Prediction] = []
        for start in range(0, len(expanded), batch_size):
            chunk = expanded[start : start + batch_size]
            loaded: list[tuple[np.ndarray, tuple[int, int] | None, SourceFacts] | str] = []
            for position, item in enumerate(chunk, start):
                try:
                    loaded.append(self.load(item, f"image {position}"))
                except IMAGE_ERRORS as exc:
                    if single and not isinstance(exc, UserError):
                        raise UserError(_item_error(item, position, exc)) from None
                    if single:
                        raise
                    loaded.append(_item_error(item, position, exc))
            good = [(item, got) for item, got in zip(chunk, loaded, strict=True) if not isinstance(got, str)]
            batch = iter(
                self.score_prepared(
                    np.stack([array for _, (array, _, _) in good]),
                    with_maps,
                    [_name(item) for item, _ in good],
                    [facts for _, (_, _, facts) in good],
                )
                if good
                else []
            )
            for item, got in zip(chunk, loaded, strict=True):
                if isinstance(got, str):
                    results.append(Prediction.failed(_name(item), got))
                    continue
                prediction = next(batch)
                prediction.size = got[1]
                results.append(prediction)
        return results

    def score_paths(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 64,
        with_maps: bool = False,
        workers: int = 0,
        skip_bad: bool = False,
        counter=None,
    ) -> Iterator[tuple[list[Prediction], int]]:
        """Score files streamed from disk, as :meth:`Predictor.score_paths` does: yields
        (predictions, images skipped) batch by batch; ``counter`` (a
        :class:`~skipganomaly.data.loading.BadImageCounter`), if given, also keeps each skipped
        file's path and reason. ``workers`` threads decode the next batch while the current one is
        scored (decoding and ONNX Runtime both release the GIL); memory stays bounded by two batches
        however many files there are. Files over :attr:`max_image_pixels` pixels are bad images."""
        names = [str(p) for p in paths]
        batch_size = check_batch_size(batch_size)

        def load(path: str):
            try:
                return self.load(path)
            except BadImageError as exc:
                if skip_bad:
                    if counter is not None:
                        counter.files.append((path, str(exc)))
                    return None
                raise

        def decode(start: int):
            chunk = names[start : start + batch_size]
            loaded = list(pool.map(load, chunk)) if pool is not None else [load(p) for p in chunk]
            return chunk, loaded

        pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
        ahead = ThreadPoolExecutor(max_workers=1) if workers > 0 else None
        try:
            starts = list(range(0, len(names), batch_size))
            pending = ahead.submit(decode, starts[0]) if ahead is not None and starts else None
            for index, start in enumerate(starts):
                if ahead is not None:
                    chunk, loaded = pending.result()
                    if index + 1 < len(starts):
                        pending = ahead.submit(decode, starts[index + 1])
                else:
                    chunk, loaded = decode(start)
                good = [(path, item) for path, item in zip(chunk, loaded, strict=True) if item is not None]
                skipped = len(chunk) - len(good)
                if counter is not None:
                    counter.skipped += skipped
                if not good:
                    yield [], skipped
                    continue
                images = np.stack([array for _, (array, _, _) in good])
                predictions = self.score_prepared(
                    images, with_maps, [path for path, _ in good], [facts for _, (_, _, facts) in good]
                )
                for prediction, (_, (_, size, _)) in zip(predictions, good, strict=True):
                    prediction.size = size
                yield predictions, skipped
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True, cancel_futures=True)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["Detector", "Prediction", "DeploymentScale", "OnnxEngine", "TorchEngine", "to_uint8_image"]

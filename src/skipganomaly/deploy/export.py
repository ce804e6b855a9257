"""``skipganomaly export``: a trained run as one self-describing ONNX file.

What is exported is the model's own scoring function, traced: whatever ``model.score(x, lambda,
details=True)`` computes (Eq. 5 today, with every buffer the model registers), preceded by the
preprocessing every batch goes through (:func:`~skipganomaly.data.loading.to_model_input`) and
followed by the run's own deployment normalisation and threshold
(:class:`~skipganomaly.scoring.normalization.ScoreNormalization`). Nothing of the score is written a second
time here, so a change to how a model scores is exported as it is. The weights come from the
checkpoint through :meth:`Checkpoint.build_model`.

Before tracing, the model is rewritten for inference into the same function (:mod:`.rewrites`:
BatchNorm folded, one-pixel and small-map layers as matrix products). The exported graph is then
checked against the PyTorch model on the run's own validation images (:func:`check_parity`): the
same verdict on every image and scores within 1e-4, or nothing is written.

The graph's input is a batch of images as the model's batches hold them, (N, H, W, C) at the run's
size, uint8 in [0, 255] (``--input-type float32``: float32 in [0, 255]); the batch size is free.
Its outputs are named and ordered by :mod:`.contract` (score, verdict, raw score, each term of
the score by name, R's anomaly map, the reconstruction, other terms' maps), each described in the
metadata, with the score's composition (``score_terms``: each term's weight, mean, std and map).
"""

from __future__ import annotations

import datetime
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.loading import to_model_input
from ..formats.checkpoint import Checkpoint, checkpoint_path, load_run_checkpoint
from ..formats.onnx_file import (
    FORMAT,
    FORMAT_VERSION,
    content_sha256,
    default_export_path,
    file_sha256,
    is_exported_file,
    metadata_props,
    parse_exported,
)
from ..runtime.files import check_output_file, remove_orphan_temporaries, write_bytes
from ..runtime.outputs import InputSet, check_replaceable, refuse_input
from ..scoring.engine import ScoringOptions
from ..specs.errors import UserError
from .contract import (
    composition,
    describe_output,
    output_names,
    paper_composition,
    term_map_output,
)
from .rewrites import inference_rewrites

OPSET = 17
INPUT_NAME = "images"
INPUT_TYPES = ("uint8", "float32")
# Parity of the rewritten, exported graph with the model it came from, checked at export on the
# run's validation images: every verdict the same, and raw and scaled scores within this tolerance,
# relative above 1 and absolute below (fp32 summation orders differ between the engines).
EXPORT_RTOL = 1e-4
CHECK_IMAGES = 8  # random images when the run's own cannot be read (and to choose the rewrites)
MAX_CHECK_IMAGES = 2048
CHECK_BATCH = 256


# --------------------------------------------------------------------------- the traced graph
class ScoringGraph(nn.Module):
    """Images (N, H, W, C) in [0, 255] -> the model's score and its parts, normalised and decided
    as the run's stored normalisation says. ``output_names`` lists what ``forward`` returns, named
    and ordered as :mod:`.contract` says (nothing else leaves the graph)."""

    def __init__(
        self, model: nn.Module, score_lambda: float, normalization, mapped_terms: tuple[str, ...] = ()
    ):
        super().__init__()
        self.model = model
        self.score_lambda = score_lambda
        self.normalization = normalization
        self.score_terms = tuple(getattr(model, "score_terms", ()) or ())
        self.mapped_terms = tuple(mapped_terms)
        self.output_names = output_names(self.score_terms, self.mapped_terms)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = to_model_input(images.permute(0, 3, 1, 2).contiguous())
        out = self.model.score(x, self.score_lambda, details=True)
        score = self.normalization(out.score)
        values = {
            "score": score,
            "is_anomalous": score >= self.normalization.threshold,
            "raw_score": out.score,
            "reconstruction": out.reconstruction,
            "latent": out.latent,
            "anomaly_map": out.anomaly_map,
            "reconstructed": out.reconstructed,
        }
        for name, value in (out.terms or {}).items():
            values.setdefault(name, value)
        for name, value in (out.maps or {}).items():
            values.setdefault(term_map_output(name), value)
        return tuple(values[name] for name in self.output_names)


def map_source(model: nn.Module) -> str:
    """The map ``anomaly_map`` holds: ``reconstruction`` (|x - G(x)|), or ``segmentation`` for a
    model with a segmentation head whose validation chose its map (``map_weights``), or ``patch``
    (the patch term's distances) where validation chose that (``patch_map_on``)."""
    if float(getattr(model, "patch_map_on", 0.0)):
        return "patch"
    weights = getattr(model, "map_weights", None)
    if weights is None or float(weights[1]) == 0.0:
        return "reconstruction"
    return "segmentation" if float(weights[0]) == 0.0 else "mixed"


def mapped_terms_of(model: nn.Module, x: torch.Tensor, score_lambda: float) -> tuple[str, ...]:
    """The terms (besides R) for which the model reports a per-pixel map when it scores."""
    with torch.no_grad():
        out = model.score(x, score_lambda, details=True)
    return tuple(out.maps or ())


def score_output_fields(model: nn.Module, x: torch.Tensor, score_lambda: float) -> tuple[str, ...]:
    """Former name of :func:`mapped_terms_of` (the graph's outputs now follow :mod:`.contract`)."""
    return mapped_terms_of(model, x, score_lambda)


def score_composition(model: nn.Module, score_lambda: float, maps: set[str]) -> list[dict[str, Any]]:
    """The metadata's ``score_terms``: how ``raw_score`` is made of the terms (:mod:`.contract`)."""
    names = tuple(getattr(model, "score_terms", ()) or ())
    if not names:
        return paper_composition(score_lambda)
    weights = getattr(model, "term_weights", None)
    return composition(
        names,
        [1.0] * len(names) if weights is None else weights.tolist(),
        model.term_mean.tolist(),
        model.term_std.tolist(),
        maps,
    )


def sample_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Random uint8 images (N, H, W, C): smooth blobs plus noise, to trace and check with."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 4, 4, channels))
    smooth = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    noisy = smooth + rng.normal(0, 20, size=smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@dataclass
class ExportResult:
    path: Path | None
    model_bytes: bytes
    metadata: dict[str, Any]
    content_sha256: str
    max_relative_difference: float  # of raw scores, exported graph vs the PyTorch model
    rewrites: dict[str, int] = field(default_factory=dict)


def _graph_node_counts(model_bytes: bytes) -> dict[str, int] | None:
    try:
        import onnx
    except ImportError:
        return None
    counts: dict[str, int] = {}
    for node in onnx.load_from_string(model_bytes).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _with_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> tuple[bytes, str]:
    """The model with its producer and metadata set, and its content hash (computed on the model
    as written, metadata aside, and on the metadata's decision fields)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    proto.producer_name = "skipganomaly"
    proto.producer_version = __version__
    proto.doc_string = (
        "Skip-GANomaly anomaly scorer exported by skipganomaly; metadata key 'skipganomaly' "
        "describes inputs, outputs, preprocessing and the threshold."
    )
    del proto.metadata_props[:]
    content_hash = content_sha256(proto.SerializeToString(), metadata)
    for key, value in metadata_props(metadata, content_hash).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString(), content_hash


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxruntime") if not _importable(name)]
    if missing:
        raise UserError(
            f"exporting needs {' and '.join(missing)}; install them with "
            "pip install 'skipganomaly[export]' (or .[dev] in a clone)"
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def trace_to_onnx(graph: ScoringGraph, sample: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    names = graph.output_names
    with warnings.catch_warnings():
        # Shapes read in Python (the dense layers' checks) are constants of this fixed image size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # the exporter's shape-inference notes
        torch.onnx.export(
            graph,
            (sample,),
            buffer,
            dynamo=False,  # the TorchScript exporter: mature for these ops, and needs no onnxscript
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def run_onnx(model_bytes: bytes, images: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    """Run an exported graph once with ONNX Runtime (for checks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: images}), strict=True))


def score_difference(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| relative to |want| above 1 and absolute below (the export check's measure)."""
    want = np.asarray(want, np.float64)
    return np.abs(np.asarray(got, np.float64) - want) / np.maximum(np.abs(want), 1.0)


def check_parity(reference: ScoringGraph, model_bytes: bytes, images: torch.Tensor) -> dict[str, Any]:
    """The exported graph against the PyTorch model on ``images``: raises (nothing is written) on
    any verdict that differs or a score difference over :data:`EXPORT_RTOL`; else the figures."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst = {"raw_score": 0.0, "score": 0.0}
    flipped = 0
    for start in range(0, len(images), CHECK_BATCH):
        batch = images[start : start + CHECK_BATCH]
        with torch.no_grad():
            want = dict(zip(reference.output_names, reference(batch), strict=True))
        got = dict(zip(names, session.run(None, {INPUT_NAME: batch.numpy()}), strict=True))
        for key in worst:
            difference = score_difference(got[key], want[key].double().numpy())
            worst[key] = max(worst[key], float(difference.max()))
        flipped += int((got["is_anomalous"].astype(bool) != want["is_anomalous"].numpy()).sum())
    largest = max(worst.values())
    if flipped or not largest <= EXPORT_RTOL:
        raise UserError(
            f"the exported graph disagrees with the PyTorch model on {len(images)} check images: "
            f"{flipped} verdicts differ, scores differ by up to {largest:.2e} (allowed {EXPORT_RTOL:g}); "
            "nothing was written (please report this with the run's config)"
        )
    return {
        "images": len(images),
        "verdicts_differing": flipped,
        "max_score_difference": worst["score"],
        "max_raw_score_difference": worst["raw_score"],
        "max_relative_difference": largest,
    }


def export_checkpoint(
    checkpoint: Checkpoint,
    *,
    which: str = "best",
    source: Path | None = None,
    input_type: str = "uint8",
    check_images: np.ndarray | None = None,
    domain: dict[str, Any] | None = None,
) -> ExportResult:
    """Export one checkpoint to ONNX bytes with metadata, checked against the PyTorch model on
    ``check_images`` (uint8 (N, H, W, C) at the run's size: the run's validation images when
    :func:`export_run` can read them; else random images); ``domain``: the training images' domain
    (:mod:`skipganomaly.scoring.domain`) for the out-of-domain warning."""
    _require_onnx()
    if input_type not in INPUT_TYPES:
        raise UserError(f"--input-type {input_type!r}: choose {' or '.join(INPUT_TYPES)}")
    model = checkpoint.build_model().eval()
    if getattr(model, "score_needs_grad", False):
        raise UserError(
            f"model {checkpoint.model_name} searches its latent code by gradient steps when it scores; "
            "such a search cannot be exported to ONNX (score it with 'skipganomaly predict')"
        )
    size, channels = checkpoint.image_size, checkpoint.channels
    cpu = torch.device("cpu")
    options = ScoringOptions.for_run(checkpoint.config, channels, cpu, None)
    score_lambda = options.score_lambda
    normalization = checkpoint.normalization

    if check_images is None:
        check_images, check_source = sample_images(CHECK_IMAGES, size, channels), "random images"
    else:
        check_images, check_source = check_images[:MAX_CHECK_IMAGES], "the run's validation images"
    tensor = torch.from_numpy(np.ascontiguousarray(check_images))
    if input_type == "float32":
        tensor = tensor.float()
    trace_input = tensor[:2]
    mapped = mapped_terms_of(
        model, to_model_input(trace_input.permute(0, 3, 1, 2).contiguous()), score_lambda
    )
    reference = ScoringGraph(model, score_lambda, normalization, mapped).eval()
    rewritten, rewrites = inference_rewrites(
        model, lambda m: ScoringGraph(m, score_lambda, normalization, mapped)(tensor[:CHECK_IMAGES])
    )
    graph = ScoringGraph(rewritten, score_lambda, normalization, mapped).eval()
    bare = trace_to_onnx(graph, trace_input)

    # The exported graph must compute what the model computes, or nothing is written.
    check = check_parity(reference, bare, tensor)
    worst = check["max_relative_difference"]
    nodes = _graph_node_counts(bare) or {}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": checkpoint.model_name, "args": dict(checkpoint.model_args)},
        "image_size": size,
        "channels": channels,
        "input": {
            "name": INPUT_NAME,
            "dtype": input_type,
            "shape": ["batch", size, size, channels],
            "layout": "NHWC",
            "range": [0, 255],
        },
        "preprocessing": checkpoint.preprocessing.to_dict()
        | {
            "description": "16-bit and float images scaled to 8 bits; converted to grayscale (1 channel) "
            "or RGB (3; transparency dropped); resized to image_size x image_size (bilinear, aspect "
            "ratio not kept); the graph then maps [0, 255] to [-1, 1] (x / 127.5 - 1)",
        },
        "normalization": normalization.to_dict()
        | {"formula": "score = (raw_score - low) / (high - low); is_anomalous = score >= threshold"},
        "score_lambda": score_lambda,
        "protocol": checkpoint.protocol,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "checkpoint": {
            "which": which,
            "epoch": checkpoint.epoch,
            "sha256": None if source is None else file_sha256(source),
            # The checkpoint's own content hash (weights, config, threshold: checkpoint.content_hash),
            # the same value the run's checkpoint stores and verifies.
            "content_hash": checkpoint.content_hash,
            "package_version": checkpoint.package_version,
        },
        "outputs": [{"name": name, "description": describe_output(name)} for name in graph.output_names],
        "score_terms": score_composition(model, score_lambda, set(graph.output_names)),
        # What anomaly_map holds: R's map, or the segmentation head's where validation chose it.
        "map_source": map_source(model),
        # The Gaussian smoothing validation chose for the maps, a fraction of the image side.
        "map_smoothing": float(getattr(model, "map_smoothing", 0.0)),
        # "mean": anomaly_map is less the normal validation images' mean map (model.map_baseline).
        "map_baseline": "mean" if float(getattr(model, "map_baseline_on", 0.0)) else "none",
        # The fraction of the map's highest pixels R averages (1: the whole image, Eq. 2).
        "map_pooling": model.pooling_fraction() if hasattr(model, "pooling_fraction") else 1.0,
        "graph_rewrites": [f"{name}: {count}" for name, count in rewrites.items() if count],
        "batchnorm_nodes_left": nodes.get("BatchNormalization", 0),
        "opset": OPSET,
        "export_check": check | {"source": check_source},
        # The training images' domain (scoring.domain), for the out-of-domain warning; None: unknown.
        "domain": domain,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "quantization": None,  # fp32; int8 was measured and not shipped (docs/deployment.md)
    }
    model_bytes, content_hash = _with_metadata(bare, metadata)
    parse_exported(model_bytes)  # what readers will check, checked now
    return ExportResult(
        path=None,
        model_bytes=model_bytes,
        metadata=metadata,
        content_sha256=content_hash,
        max_relative_difference=worst,
        rewrites=rewrites,
    )


def validation_images(checkpoint: Checkpoint, splits=None) -> np.ndarray | None:
    """The run's validation images as its batches hold them (uint8 (N, H, W, C)), read as training
    read them; None when its data cannot be read here (then the check uses random images and the
    metadata's ``export_check.source`` says so)."""
    splits = splits if splits is not None else run_splits(checkpoint)
    if splits is None or splits.val.images is None:
        return None
    from ..data.images import prepare_array

    size, channels = checkpoint.image_size, checkpoint.channels
    return prepare_array(splits.val.images[:MAX_CHECK_IMAGES], size, channels)


def run_splits(checkpoint: Checkpoint):
    """The run's data split as training split it, or None when it cannot be read here."""
    from ..data import prepare_data

    try:
        return prepare_data(checkpoint.config.data)
    except (UserError, OSError):
        return None


def run_domain(run_dir: str | os.PathLike, checkpoint: Checkpoint, splits=None) -> dict[str, Any] | None:
    """The run's training domain (:mod:`skipganomaly.scoring.domain`): as stored when it finished,
    else described now from its training images; None when neither is possible."""
    from ..scoring.domain import domain_of, read_domain

    stored = read_domain(run_dir)
    if stored is not None:
        return stored.to_dict()
    splits = splits if splits is not None else run_splits(checkpoint)
    if splits is None:
        return None
    try:
        return domain_of(splits.train, checkpoint.image_size, checkpoint.channels).to_dict()
    except ValueError:
        return None


def export_run(
    run_dir: str | os.PathLike,
    which: str = "best",
    output: str | os.PathLike | None = None,
    input_type: str = "uint8",
    overwrite: bool = False,
) -> ExportResult:
    """Export a run's checkpoint and write it (atomically) to ``output`` or the default path.
    The path is checked before any work: a ``*.onnx`` name, creatable, not the checkpoint, and
    either new or an earlier export (any other file only with ``overwrite``). Temporaries that a
    killed export to the same path left are removed."""
    path = Path(output) if output is not None else default_export_path(run_dir, which)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"--output {path}: name the file *.onnx")
    check_output_file(path, "--output", "model.onnx")
    source = checkpoint_path(run_dir, which)
    refuse_input(path, InputSet([source]), "--output")
    check_replaceable(path, "--output", is_exported_file, "an ONNX export", overwrite)
    checkpoint = load_run_checkpoint(run_dir, which)
    splits = run_splits(checkpoint)
    result = export_checkpoint(
        checkpoint,
        which=which,
        source=source,
        input_type=input_type,
        check_images=validation_images(checkpoint, splits),
        domain=run_domain(run_dir, checkpoint, splits),
    )
    remove_orphan_temporaries(path.parent, path.name)
    write_bytes(path, result.model_bytes)
    result.path = path
    return result

"""``skipganomaly export``: a trained run as one self-describing ONNX file.

What is exported is the model's own scoring function, traced: whatever ``model.score(x, lambda,
details=True)`` computes (Eq. 5 today, with every buffer the model registers), preceded by the
preprocessing every batch goes through (:func:`~skipganomaly.data.loading.to_model_input`) and
followed by the run's own deployment normalisation and threshold
(:class:`~skipganomaly.scoring.normalization.ScoreNormalization`). Nothing of the score is written a second
time here, so a change to how a model scores is exported as it is. The weights come from the
checkpoint through :meth:`Checkpoint.build_model`.

Before tracing, the model is rewritten for inference into the same function (:mod:`.rewrites`:
BatchNorm folded, one-pixel and small-map layers as matrix products), checked on images before
anything is written.

The graph's input is a batch of images as the model's batches hold them, (N, H, W, C) at the run's
size, uint8 in [0, 255] (``--input-type float32``: float32 in [0, 255]); the batch size is free.
Its outputs per image: ``score`` (normalised) and ``is_anomalous`` as ``predict`` reports them,
``raw_score`` (A of Eq. 5), the score's parts (``reconstruction`` R, ``latent`` L, and any other
per-image term the model's ``ScoreOutput`` carries), the ``anomaly_map`` (N, H, W) and the
reconstruction ``reconstructed`` (N, C, H, W in [-1, 1]).
"""

from __future__ import annotations

import dataclasses
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
from ..specs.score_terms import SCORE_TERM_SPECS
from .rewrites import inference_rewrites

OPSET = 17
INPUT_NAME = "images"
INPUT_TYPES = ("uint8", "float32")
# Parity of the rewritten, exported graph with the model it came from, checked at export on
# random images: raw scores within this relative tolerance (fp32 summation orders differ).
EXPORT_RTOL = 1e-4
CHECK_IMAGES = 8
# ScoreOutput fields that are not exported: the feature vectors (large; not a result).
_NOT_EXPORTED = ("features",)
# How each exported output is described in the metadata: the graph's own outputs, then every score
# term's (an output named as a term holds that term per image; specs.score_terms says what each is).
OUTPUT_DESCRIPTIONS = {
    "score": "per image: the anomaly score scaled by the run's deployment normalisation "
    "(normal validation images span 0 to 1)",
    "is_anomalous": "per image: score >= threshold",
    "raw_score": "per image: the model's anomaly score A before scaling (Eq. 5)",
    **{name: f"per image: {spec.title}" for name, spec in SCORE_TERM_SPECS.items()},
    "anomaly_map": "(N, H, W): per-pixel |x - G(x)| averaged over channels",
    "reconstructed": "(N, C, H, W): the reconstruction G(x) in [-1, 1]",
}


# --------------------------------------------------------------------------- the traced graph
class ScoringGraph(nn.Module):
    """Images (N, H, W, C) in [0, 255] -> the model's score and its parts, normalised and decided
    as the run's stored normalisation says. ``output_names`` lists what ``forward`` returns."""

    def __init__(self, model: nn.Module, score_lambda: float, normalization, output_fields: list[str]):
        super().__init__()
        self.model = model
        self.score_lambda = score_lambda
        self.normalization = normalization
        self.output_fields = output_fields  # ScoreOutput fields after ``score``, in order
        self.output_names = ["score", "is_anomalous", "raw_score", *output_fields]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = to_model_input(images.permute(0, 3, 1, 2).contiguous())
        out = self.model.score(x, self.score_lambda, details=True)
        score = self.normalization(out.score)
        is_anomalous = score >= self.normalization.threshold
        return (score, is_anomalous, out.score, *(getattr(out, name) for name in self.output_fields))


def score_output_fields(model: nn.Module, x: torch.Tensor, score_lambda: float) -> list[str]:
    """The per-image ScoreOutput fields (besides ``score``) that the model returns with details."""
    with torch.no_grad():
        out = model.score(x, score_lambda, details=True)
    return [
        f.name
        for f in dataclasses.fields(out)
        if f.name != "score" and f.name not in _NOT_EXPORTED and getattr(out, f.name) is not None
    ]


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


def export_checkpoint(
    checkpoint: Checkpoint,
    *,
    which: str = "best",
    source: Path | None = None,
    input_type: str = "uint8",
) -> ExportResult:
    """Export one checkpoint to ONNX bytes with metadata, checked against the PyTorch model."""
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

    images = sample_images(CHECK_IMAGES, size, channels)
    tensor = torch.from_numpy(images)
    if input_type == "float32":
        tensor = tensor.float()
    fields = score_output_fields(model, to_model_input(tensor.permute(0, 3, 1, 2).contiguous()), score_lambda)
    reference = ScoringGraph(model, score_lambda, normalization, fields).eval()
    rewritten, rewrites = inference_rewrites(
        model, lambda m: ScoringGraph(m, score_lambda, normalization, fields)(tensor)
    )
    graph = ScoringGraph(rewritten, score_lambda, normalization, fields).eval()
    bare = trace_to_onnx(graph, tensor[:2])

    # The exported graph must compute what the model computes, or nothing is written.
    with torch.no_grad():
        expected = dict(zip(reference.output_names, reference(tensor), strict=True))
    got = run_onnx(bare, tensor.numpy())
    want = expected["raw_score"].double().numpy()
    difference = np.abs(got["raw_score"].astype(np.float64) - want) / np.maximum(np.abs(want), 1e-12)
    worst = float(difference.max())
    if not worst <= EXPORT_RTOL:
        raise RuntimeError(
            f"the exported graph's raw scores differ from the model's by up to {worst:.2e} (relative; "
            f"allowed {EXPORT_RTOL:g}); nothing was written. Please report this with the run's config."
        )

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
        "outputs": [
            {"name": name, "description": OUTPUT_DESCRIPTIONS.get(name, f"per image: {name}")}
            for name in graph.output_names
        ],
        "graph_rewrites": [f"{name}: {count}" for name, count in rewrites.items() if count],
        "batchnorm_nodes_left": nodes.get("BatchNormalization", 0),
        "opset": OPSET,
        "export_check": {"images": CHECK_IMAGES, "max_relative_difference": worst},
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
    result = export_checkpoint(checkpoint, which=which, source=source, input_type=input_type)
    remove_orphan_temporaries(path.parent, path.name)
    write_bytes(path, result.model_bytes)
    result.path = path
    return result

"""``skipganomaly export``: a trained run as one self-describing ONNX file.

What is exported is the model's own scoring function, traced: whatever ``model.score(x, lambda,
details=True)`` computes (Eq. 5 today, with every buffer the model registers), preceded by the
preprocessing every batch goes through (:func:`~skipganomaly.data.loading.to_model_input`) and
followed by the run's own deployment normalisation and threshold
(:class:`~skipganomaly.scoring.normalization.ScoreNormalization`). Nothing of the score is written a second
time here, so a change to how a model scores is exported as it is. The weights come from the
checkpoint through :meth:`Checkpoint.build_model`.

Before tracing, the model is rewritten for inference into the same function (checked on images
before anything is written):

* **BatchNorm folded** into the convolution before it (eval mode: an affine map per channel);
* **dense one-pixel layers** (:class:`~skipganomaly.models.blocks.DenseFastConv2d` at the 1x1 end
  of the networks) as matrix products with their weights cut once, instead of cut per call;
* **small maps as one matrix product**: a convolution with at most 4 output pixels (a transposed
  one with at most 4 input pixels) as one product over the batch (:class:`PatchConv`,
  :class:`PatchConvTranspose`); ONNX Runtime computes convolutions image by image, too small at
  2x2 to be fast (docs/deployment.md).

The graph's input is a batch of images as the model's batches hold them, (N, H, W, C) at the run's
size, uint8 in [0, 255] (``--input-type float32``: float32 in [0, 255]); the batch size is free.
Its outputs per image: ``score`` (normalised) and ``is_anomalous`` as ``predict`` reports them,
``raw_score`` (A of Eq. 5), the score's parts (``reconstruction`` R, ``latent`` L, and any other
per-image term the model's ``ScoreOutput`` carries), the ``anomaly_map`` (N, H, W) and the
reconstruction ``reconstructed`` (N, C, H, W in [-1, 1]).
"""

from __future__ import annotations

import copy
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
import torch.nn.functional as F
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
    metadata_props,
    parse_exported,
)
from ..models.blocks import DenseFastConv2d
from ..runtime.files import write_bytes
from ..scoring.engine import ScoringOptions
from ..specs.errors import UserError

OPSET = 17
INPUT_NAME = "images"
INPUT_TYPES = ("uint8", "float32")
# Parity of the rewritten, exported graph with the model it came from, checked at export on
# random images: raw scores within this relative tolerance (fp32 summation orders differ).
EXPORT_RTOL = 1e-4
CHECK_IMAGES = 8
# ScoreOutput fields that are not exported: the feature vectors (large; not a result).
_NOT_EXPORTED = ("features",)
# How each exported output is described in the metadata.
OUTPUT_DESCRIPTIONS = {
    "score": "per image: the anomaly score scaled by the run's deployment normalisation "
    "(normal validation images span 0 to 1)",
    "is_anomalous": "per image: score >= threshold",
    "raw_score": "per image: the model's anomaly score A before scaling (Eq. 5)",
    "reconstruction": "per image: R of Eq. 5, mean |x - G(x)|",
    "latent": "per image: L of Eq. 5, mean (f(x) - f(G(x)))^2",
    "anomaly_map": "(N, H, W): per-pixel |x - G(x)| averaged over channels",
    "reconstructed": "(N, C, H, W): the reconstruction G(x) in [-1, 1]",
}


# --------------------------------------------------------------------------- inference rewrites
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d or ConvTranspose2d in an
    ``nn.Sequential`` into that convolution (the BatchNorm becomes an Identity). Returns how many
    were folded. The model must be in eval mode (running statistics)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if (
                isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                and isinstance(norm, nn.BatchNorm2d)
                and norm.track_running_stats
                and norm.running_mean is not None
            ):
                module._modules[first] = fuse_conv_bn_eval(
                    conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d)
                )
                module._modules[second] = nn.Identity()
                folded += 1
    return folded


class DenseConv(nn.Module):
    """A convolution with a single output pixel as one matrix product, its weight cut once to the
    taps that touch the input (what :class:`DenseFastConv2d` cuts at every call)."""

    def __init__(self, conv: nn.Conv2d, input_hw: tuple[int, int]):
        super().__init__()
        (ph, pw), (h, w) = conv.padding, input_hw
        weight = conv.weight.detach()[:, :, ph : ph + h, pw : pw + w].reshape(conv.out_channels, -1)
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias).unsqueeze(-1).unsqueeze(-1)


class DenseConvTranspose(nn.Module):
    """A transposed convolution of a 1x1 input as one matrix product (weights cut once)."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        self.out_shape = (conv.out_channels, kh - 2 * ph, kw - 2 * pw)
        weight = conv.weight.detach()[:, :, ph : kh - ph, pw : kw - pw].reshape(conv.in_channels, -1)
        self.weight = nn.Parameter(weight.t().contiguous().clone(), requires_grad=False)
        bias = None
        if conv.bias is not None:
            bias = conv.bias.detach().repeat_interleave(self.out_shape[1] * self.out_shape[2])
        self.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias).unflatten(1, self.out_shape)


# Convolutions whose output (and transposed convolutions whose input) has at most this many pixels
# are rewritten as one matrix product over the whole batch: ONNX Runtime's CPU kernels compute a
# convolution image by image, and at 2x2 or 4x4 pixels per image each product is too small to be
# fast (measured 1.5-1.8x faster as one product; larger maps are faster as they are).
SMALL_MAP_PIXELS = 4


class PatchConv(nn.Module):
    """A convolution with a few output pixels as one matrix product: the input windows of every
    output pixel (cut by slicing the padded input) times the flattened weight, batch and pixels
    together as rows."""

    def __init__(self, conv: nn.Conv2d, input_hw: tuple[int, int]):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        h, w = input_hw
        self.out_hw = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        self.kernel, self.stride, self.pad = (kh, kw), (sh, sw), (pw, pw, ph, ph)
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(
            conv.weight.detach().reshape(conv.out_channels, -1).t().contiguous(), requires_grad=False
        )
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, self.pad)
        (kh, kw), (sh, sw), (ho, wo) = self.kernel, self.stride, self.out_hw
        windows = [
            padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].flatten(1)
            for i in range(ho)
            for j in range(wo)
        ]
        y = torch.stack(windows, 1) @ self.weight  # (N, pixels, out_channels)
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2).unflatten(2, (ho, wo))


class PatchConvTranspose(nn.Module):
    """A transposed convolution of a few input pixels as one matrix product (every input pixel
    times the flattened weight: its k x k patch of every output channel), then each patch added
    at its place in the output (pad and add) and the padding cropped."""

    def __init__(self, conv: nn.ConvTranspose2d, input_hw: tuple[int, int]):
        super().__init__()
        self.kernel, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.input_hw = input_hw
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(
            conv.weight.detach().reshape(conv.in_channels, -1).contiguous(), requires_grad=False
        )
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw), (h, w) = self.kernel, self.stride, self.padding, self.input_hw
        full_h, full_w = (h - 1) * sh + kh, (w - 1) * sw + kw
        patches = x.flatten(2).transpose(1, 2) @ self.weight  # (N, pixels, out_channels * kh * kw)
        out = None
        for i in range(h):
            for j in range(w):
                patch = patches[:, i * w + j].unflatten(1, (self.out_channels, kh, kw))
                placed = F.pad(patch, (j * sw, full_w - kw - j * sw, i * sh, full_h - kh - i * sh))
                out = placed if out is None else out + placed
        out = out[:, :, ph : full_h - ph, pw : full_w - pw]
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def _phase_taps(kernel: int, stride: int, padding: int) -> tuple[list[list[tuple[int, int]]], int, int]:
    """Per output phase a (output index s*m + a) of a transposed convolution, the (input offset d,
    kernel tap k) pairs with y[s*m + a] = sum x[m + d] w[k]; and the smallest and largest offset."""
    phases = [
        [((a + padding - k) // stride, k) for k in range(kernel) if (a + padding - k) % stride == 0]
        for a in range(stride)
    ]
    offsets = [d for taps in phases for d, _ in taps]
    return phases, min(offsets), max(offsets)


class SubPixelConvTranspose(nn.Module):
    """``ConvTranspose2d(kernel k, stride s, padding p)`` with ``k - 2p == s`` as one ``Conv2d``
    computing the s*s output phases as channels, then ``pixel_shuffle``: the same products (and
    some with zero weights), as a plain convolution, which int8 quantisation covers (ONNX
    Runtime has no quantised ``ConvTranspose`` kernel on CPUs)."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        (kh, kw), (s, _), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        rows, low_h, high_h = _phase_taps(kh, s, ph)
        cols, low_w, high_w = _phase_taps(kw, s, pw)
        source = conv.weight.detach()  # (in, out, kh, kw)
        cin, cout = conv.in_channels, conv.out_channels
        weight = torch.zeros(cout, s, s, cin, high_h - low_h + 1, high_w - low_w + 1, dtype=source.dtype)
        for a, taps_h in enumerate(rows):
            for b, taps_w in enumerate(cols):
                for dh, th in taps_h:
                    for dw, tw in taps_w:
                        weight[:, a, b, :, dh - low_h, dw - low_w] = source[:, :, th, tw].t()
        # output channel c*s*s + a*s + b is phase (a, b) of channel c, as pixel_shuffle expects
        self.weight = nn.Parameter(weight.flatten(0, 2), requires_grad=False)
        bias = None if conv.bias is None else conv.bias.detach().repeat_interleave(s * s)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride = s
        self.pad = (-low_w, high_w, -low_h, high_h)  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pad
        if left == right and top == bottom:  # the convolution's own padding: no separate Pad node
            y = F.conv2d(x, self.weight, self.bias, padding=(top, left))
        else:
            y = F.conv2d(F.pad(x, self.pad), self.weight, self.bias)
        return F.pixel_shuffle(y, self.stride)


def _sub_pixel_applies(conv: nn.ConvTranspose2d) -> bool:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return sh == sw and sh > 1 and kh - 2 * ph == sh and kw - 2 * pw == sw


def _plain_geometry(conv: nn.Module) -> bool:
    return (
        conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and getattr(conv, "output_padding", (0, 0)) == (0, 0)
    )


def _input_shapes(model: nn.Module, run) -> dict[str, set[tuple[int, ...]]]:
    """The per-image input shape each convolution saw while ``run()`` ran."""
    seen: dict[str, set[tuple[int, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):

            def record(_module, args, name=name):
                seen.setdefault(name, set()).add(tuple(args[0].shape[1:]))

            handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inference_rewrites(
    model: nn.Module, run, *, small_maps: bool = True, sub_pixel: bool = False
) -> tuple[nn.Module, dict[str, int]]:
    """A copy of ``model`` (eval mode) rewritten for inference into the same function (see the
    module docstring); ``run(copy)`` runs it once on sample images to learn each layer's input
    size. ``small_maps``: layers on maps of at most :data:`SMALL_MAP_PIXELS` pixels as one matrix
    product; ``sub_pixel``: the other transposed convolutions as sub-pixel convolutions. Returns
    the copy and how many layers each rewrite changed."""
    model = copy.deepcopy(model).eval()
    counts = {
        "batchnorm_folded": fold_batchnorm(model),
        "dense_one_pixel": 0,
        "small_map_matmul": 0,
        "sub_pixel_conv_transpose": 0,
    }
    shapes = _input_shapes(model, lambda: run(model))
    for name, module in list(model.named_modules()):
        if name not in shapes or len(shapes[name]) != 1 or not _plain_geometry(module):
            continue
        (shape,) = shapes[name]
        hw = shape[-2:]
        if isinstance(module, nn.Conv2d):
            (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
            out_pixels = ((hw[0] + 2 * ph - kh) // sh + 1) * ((hw[1] + 2 * pw - kw) // sw + 1)
            if (
                isinstance(module, DenseFastConv2d)
                and module._dense_window(torch.empty(1, *shape)) is not None
            ):
                _replace(model, name, DenseConv(module, hw))
                counts["dense_one_pixel"] += 1
            elif small_maps and out_pixels <= SMALL_MAP_PIXELS:
                _replace(model, name, PatchConv(module, hw))
                counts["small_map_matmul"] += 1
        elif isinstance(module, nn.ConvTranspose2d):
            (kh, kw), (ph, pw) = module.kernel_size, module.padding
            if hw == (1, 1) and kh - 2 * ph >= 1 and kw - 2 * pw >= 1:
                _replace(model, name, DenseConvTranspose(module))
                counts["dense_one_pixel"] += 1
            elif small_maps and hw[0] * hw[1] <= SMALL_MAP_PIXELS:
                _replace(model, name, PatchConvTranspose(module, hw))
                counts["small_map_matmul"] += 1
            elif sub_pixel and _sub_pixel_applies(module):
                _replace(model, name, SubPixelConvTranspose(module))
                counts["sub_pixel_conv_transpose"] += 1
    return model, counts


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
    as written, metadata aside)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    proto.producer_name = "skipganomaly"
    proto.producer_version = __version__
    proto.doc_string = (
        "Skip-GANomaly anomaly scorer exported by skipganomaly; metadata key 'skipganomaly' "
        "describes inputs, outputs, preprocessing and the threshold."
    )
    del proto.metadata_props[:]
    content_hash = content_sha256(proto.SerializeToString())
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
) -> ExportResult:
    """Export a run's checkpoint and write it (atomically) to ``output`` or the default path."""
    checkpoint = load_run_checkpoint(run_dir, which)
    result = export_checkpoint(
        checkpoint, which=which, source=checkpoint_path(run_dir, which), input_type=input_type
    )
    path = Path(output) if output is not None else default_export_path(run_dir, which)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"--output {path}: name the file *.onnx")
    write_bytes(path, result.model_bytes)
    result.path = path
    return result

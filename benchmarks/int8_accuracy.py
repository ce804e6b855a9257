"""Does int8 keep the accuracy? AUROC of a run's fp32 ONNX export against int8 versions of it.

    python benchmarks/int8_accuracy.py --run runs/quickstart [--data-root DIR] [--json FILE]

The fp32 graph is what ``skipganomaly export`` writes. The int8 graphs are statically quantised
with ONNX Runtime (QDQ format, int8 weights per output channel, uint8 activations) from the same
model rewritten so that every layer is a ``Conv`` or a ``MatMul`` (ONNX Runtime has no int8
``ConvTranspose`` on CPUs: ``inference_rewrites(sub_pixel=True)``), their activation ranges
calibrated on the run's normal *training* images. Variants: MinMax calibration on 256 images (the
default of ONNX Runtime), Percentile calibration on 1024, and the generator's last layer (whose
output G(x) the score compares with x pixel by pixel) kept in fp32.

Each graph scores the run's validation and test splits (read again from the run's data set); the
script prints AUROC and the difference from fp32, and the scoring rate of fp32 and the default
int8 graph, interleaved rounds, median. Issue 11's rule: int8 is offered only if its AUROC stays
within 0.005 of fp32 on digits and on a CIFAR-10 class (docs/deployment.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import skipganomaly  # noqa: F401  (before numpy/torch: OpenMP's wait policy)

# isort: split
import numpy as np
import torch

from skipganomaly.data import prepare_data
from skipganomaly.data.images import load_image
from skipganomaly.data.loading import to_model_input
from skipganomaly.deploy.export import (
    INPUT_NAME,
    ScoringGraph,
    export_checkpoint,
    inference_rewrites,
    sample_images,
    score_output_fields,
    trace_to_onnx,
)
from skipganomaly.formats.checkpoint import load_run_checkpoint
from skipganomaly.scoring.engine import ScoringOptions
from skipganomaly.scoring.metrics import auroc


def set_images(image_set, indices: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Images of an ImageSet (in memory or files) as one uint8 (N, H, W, C) array."""
    if image_set.in_memory:
        return np.ascontiguousarray(image_set.images[indices])
    return np.stack([load_image(image_set.paths[i], size, channels) for i in indices])


def quantisable_fp32(checkpoint) -> bytes:
    """The run's scoring graph with every layer a Conv or MatMul (sub-pixel transposed
    convolutions, no small-map products), fp32, ready for static quantisation."""
    model = checkpoint.build_model().eval()
    options = ScoringOptions.for_run(checkpoint.config, checkpoint.channels, torch.device("cpu"), None)
    sample = torch.from_numpy(sample_images(8, checkpoint.image_size, checkpoint.channels))
    fields = score_output_fields(
        model, to_model_input(sample.permute(0, 3, 1, 2).contiguous()), options.score_lambda
    )

    def graph(m):
        return ScoringGraph(m, options.score_lambda, checkpoint.normalization, fields).eval()

    rewritten, _ = inference_rewrites(model, lambda m: graph(m)(sample), small_maps=False, sub_pixel=True)
    return trace_to_onnx(graph(rewritten), sample[:2])


def last_generator_layers(model_bytes: bytes) -> list[str]:
    """The Conv/MatMul nodes nearest upstream of the ``reconstructed`` output."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    producer = {out: node for node in graph.node for out in node.output}
    found, seen, stack = [], set(), ["reconstructed"]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            found.append(node.name)
        else:
            stack.extend(node.input)
    return found


def quantize(
    fp32: bytes, calibration: np.ndarray, method: str = "MinMax", exclude: list[str] | None = None
) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{INPUT_NAME: calibration[i : i + 32]} for i in range(0, len(calibration), 32)]
            )

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(fp32)
        quantize_static(
            source,
            target,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=exclude or [],
            calibrate_method=getattr(CalibrationMethod, method),
        )
        return target.read_bytes()


def session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def raw_scores(sess, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = [
        sess.run(["raw_score"], {INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--data-root", help="read the data from here instead of the path stored in the run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed scoring rounds (interleaved)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice on pre-processing
    checkpoint = load_run_checkpoint(args.run, args.checkpoint)
    config = checkpoint.config
    if args.data_root:
        config.data.root = args.data_root
    splits = prepare_data(config.data)
    size, channels = checkpoint.image_size, checkpoint.channels
    rng = np.random.default_rng(0)
    train = splits.train
    normal = np.flatnonzero(train.labels == 0) if train.labels is not None else np.arange(len(train))

    def calibration(n: int) -> np.ndarray:
        return set_images(
            train, np.sort(rng.choice(normal, size=min(n, len(normal)), replace=False)), size, channels
        )

    fp32 = export_checkpoint(checkpoint, which=args.checkpoint).model_bytes
    base = quantisable_fp32(checkpoint)
    last = last_generator_layers(base)
    graphs = {
        "fp32 (export)": fp32,
        "int8 MinMax, 256 images": quantize(base, calibration(256)),
        "int8 Percentile, 1024 images": quantize(base, calibration(1024), "Percentile"),
        "int8 MinMax, 256 images, G's last layer fp32": quantize(base, calibration(256), exclude=last),
    }
    sessions = {name: session(model, args.threads) for name, model in graphs.items()}
    splits_images = {
        name: (
            getattr(splits, name).labels,
            set_images(getattr(splits, name), np.arange(len(getattr(splits, name))), size, channels),
        )
        for name in ("val", "test")
    }
    rows = []
    reference = {}
    for name, sess in sessions.items():
        row = {"graph": name, "size_mib": round(len(graphs[name]) / 2**20, 2)}
        for split, (labels, images) in splits_images.items():
            value = auroc(labels, raw_scores(sess, images))
            if name.startswith("fp32"):
                reference[split] = value
            row[f"{split}_auroc"] = value
            row[f"{split}_difference"] = value - reference[split]
        rows.append(row)

    timing_names = ["fp32 (export)", "int8 MinMax, 256 images"]
    images = splits_images["test"][1]
    rates = {name: [] for name in timing_names}
    for _ in range(args.rounds):
        for name in timing_names:
            started = time.perf_counter()
            raw_scores(sessions[name], images)
            rates[name].append(len(images) / (time.perf_counter() - started))

    result = {
        "run": args.run,
        "dataset": config.data.dataset,
        "abnormal_classes": splits.info.abnormal_classes,
        "image_size": size,
        "model_args": checkpoint.model_args,
        "n": {split: int(len(labels)) for split, (labels, _) in splits_images.items()},
        "rows": rows,
        "img_s": {name: round(statistics.median(v), 1) for name, v in rates.items()},
        "load_average": os.getloadavg(),
    }
    print(f"{'graph':<46} {'MiB':>6} {'val AUROC':>10} {'diff':>8} {'test AUROC':>10} {'diff':>8}")
    for row in rows:
        print(
            f"{row['graph']:<46} {row['size_mib']:>6.2f} {row['val_auroc']:>10.4f} {row['val_difference']:>+8.4f} "
            f"{row['test_auroc']:>10.4f} {row['test_difference']:>+8.4f}"
        )
    print(
        "scoring img/s (test split, batches of 256, median): "
        + ", ".join(f"{k} {v}" for k, v in result["img_s"].items())
    )
    default = rows[1]
    worst = max(abs(default["val_difference"]), abs(default["test_difference"]))
    print(
        f"default int8: largest |AUROC difference| {worst:.4f} -> {'within' if worst <= 0.005 else 'NOT within'} 0.005"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``skipganomaly export``: a trained run as one self-describing ONNX file."""

from __future__ import annotations

import argparse

from .options import add_common

NAME = "export"


def add_parser(verbs) -> None:
    export = verbs.add_parser(
        NAME,
        help="export a trained run as one self-describing ONNX file",
        description=(
            "Export a run's checkpoint to ONNX: the model's own scoring function with the preprocessing, "
            "the deployment normalisation and the threshold, BatchNorm folded; image size, channels, "
            "preprocessing, normalisation, threshold, model, protocol, package version and a content hash "
            "in the model's metadata (docs/deployment.md). The graph is checked against the PyTorch model "
            "before it is written."
        ),
    )
    export.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="the --output folder of a training run"
    )
    export.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)"
    )
    export.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    export.add_argument(
        "--output", metavar="FILE.onnx", help="where to write (default RUN_DIR/exports/<checkpoint>.onnx)"
    )
    export.add_argument(
        "--input-type",
        default="uint8",
        choices=["uint8", "float32"],
        help="the graph's input: (N, H, W, C) uint8 (default) or float32, both in [0, 255]",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing file at --output that is not an earlier export (never the checkpoint)",
    )
    add_common(export)


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import export_run

    result = export_run(args.run, args.checkpoint, args.output, args.input_type, args.overwrite)
    m = result.metadata
    print(
        f"wrote {result.path} ({len(result.model_bytes) / 2**20:.1f} MiB): {m['model']['name']}, "
        f"{m['image_size']}x{m['image_size']}x{m['channels']} {m['input']['dtype']} input, threshold "
        f"{m['normalization']['threshold']:.4f}, protocol {m['protocol']}; "
        f"{', '.join(m['graph_rewrites'])}; raw scores match PyTorch within "
        f"{result.max_relative_difference:.1e} (relative); content SHA-256 {result.content_sha256[:16]}..."
    )
    return 0

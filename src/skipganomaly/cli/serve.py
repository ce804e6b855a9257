"""``skipganomaly serve``: the HTTP scoring service with its inspection page."""

from __future__ import annotations

import argparse
import sys

from ..specs.errors import UserError
from .options import add_common

NAME = "serve"


def add_parser(verbs) -> None:
    serve = verbs.add_parser(
        NAME,
        help="HTTP scoring service with an inspection page",
        description=(
            "Serve a run (its ONNX export, made when needed) or an exported .onnx file over HTTP: "
            "POST /v1/score, GET /v1/model, GET /healthz, GET /openapi.json, API docs at /docs and the "
            "inspection page at /. Binds to 127.0.0.1 unless --host names another address; the service has "
            "no authentication, so expose it only behind a proxy that adds it (docs/deployment.md)."
        ),
    )
    which = serve.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_DIR", help="a training run folder")
    which.add_argument("--onnx", metavar="FILE.onnx", help="an exported model (needs no PyTorch)")
    serve.add_argument(
        "--checkpoint", default="best", choices=["best", "last"], help="with --run: which checkpoint"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 listens on every interface)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 takes a free one)")
    serve.add_argument(
        "--threads", type=int, default=0, metavar="N", help="ONNX Runtime threads (default: all cores)"
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=32, metavar="MB", help="largest request body (default 32)"
    )
    serve.add_argument(
        "--max-images", type=int, default=64, metavar="N", help="images per request (default 64)"
    )
    serve.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        metavar="N",
        help="width x height of one image, checked before decoding (default 40,000,000)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=64, metavar="N", help="images per model call (default 64)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_common(serve)


def run(args: argparse.Namespace) -> int:
    from ..deploy.detector import Detector
    from ..service import ServiceLimits, is_loopback, serve

    for name in ("max_images", "max_pixels", "max_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb {args.max_upload_mb}: use a positive size")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 0 to 65535")
    if args.onnx:
        detector = Detector.from_onnx(args.onnx, args.threads)
    else:
        from ..deploy.run_exports import exported_for_run

        detector = Detector.from_exported(
            exported_for_run(args.run, args.checkpoint, log=print), args.threads
        )
    limits = ServiceLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_images=args.max_images,
        max_image_pixels=args.max_pixels,
        max_batch=args.max_batch,
    )
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}, reachable from other machines; the service has no "
            "authentication or TLS: put it behind a proxy that adds them (docs/deployment.md)",
            file=sys.stderr,
        )

    def ready(url: str) -> None:
        info = detector.info
        print(
            f"serving {info['model']} ({info['image_size']} px, threshold {detector.threshold:.4f}, "
            f"{info.get('engine')}) on {url}: page {url}/, API docs {url}/docs; Ctrl-C stops",
            flush=True,
        )

    serve(detector, args.host, args.port, limits, args.log_level, ready=ready)
    return 0

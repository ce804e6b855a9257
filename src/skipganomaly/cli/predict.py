"""``skipganomaly predict``: score image files and folders with a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..specs.errors import UserError
from .options import add_common, add_trained_run

NAME = "predict"


def add_parser(verbs) -> None:
    predict = verbs.add_parser(
        NAME,
        help="score image files and folders",
        description=(
            "Score images with a trained run (--run RUN_DIR), or with an exported model alone "
            "(predict MODEL.onnx PATH...: ONNX Runtime, no PyTorch needed), and write a CSV with columns "
            "path, score, is_anomalous (and raw_score, reconstruction, latent, heatmap, out_of_domain, "
            "domain_reason). Scores use the normalisation and "
            "threshold fixed at training time, so a file's score does not depend on the others. Rows "
            "appear in FILE.csv.partial as images are scored; it replaces FILE.csv when all are scored, "
            "so a run that fails leaves a previous FILE.csv as it was. Images skipped with "
            "--skip-bad-images are listed in FILE.skipped.csv (path, reason). No output replaces an "
            "input, or an existing file predict did not write unless you pass --overwrite."
        ),
    )
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files or folders (searched recursively); without --run, the first is the exported MODEL.onnx",
    )
    add_trained_run(predict, required=False)
    predict.add_argument(
        "--output",
        default="predictions.csv",
        metavar="FILE.csv",
        help="CSV to write (default predictions.csv)",
    )
    predict.add_argument(
        "--heatmaps", metavar="DIR", help="also write one anomaly-map PNG per image into DIR"
    )
    predict.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    predict.add_argument(
        "--workers", type=int, default=0, metavar="N", help="DataLoader workers decoding images"
    )
    predict.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images instead of stopping (listed in FILE.skipped.csv)",
    )
    predict.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="an image with more pixels is a bad image (default: the run's data.max_image_pixels)",
    )
    predict.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "onnx"],
        help="torch (default): the PyTorch model; onnx: the run's ONNX export on ONNX Runtime (exported to "
        "RUN_DIR/exports/ first when needed; --workers threads decode ahead)",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files at the output paths that predict did not write (never an input)",
    )
    add_common(predict)


def run(args: argparse.Namespace) -> int:
    from ..data.images import collect_image_paths
    from ..deploy.predict_csv import plan_outputs, predict_to_csv, skipped_list_path
    from ..runtime.files import WriteError, check_output_file, check_output_folder, partial_path

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: use 1 or more")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise UserError(f"--max-image-pixels {args.max_image_pixels}: use a positive number")
    output = Path(args.output)
    heatmaps = Path(args.heatmaps) if args.heatmaps else None
    # Before the model is loaded or any image read.
    check_output_file(output, "--output", "predictions.csv")
    if heatmaps is not None:
        check_output_folder(heatmaps, "--heatmaps")
    if args.run is None:
        from ..deploy.detector import Detector

        model, *paths = args.paths
        if not model.lower().endswith(".onnx") or not paths:
            raise UserError(
                "name the model: predict --run RUN_DIR PATH..., or predict MODEL.onnx PATH... "
                "(an export written by 'skipganomaly export')"
            )
        args.paths = paths
        predictor = Detector.from_onnx(model, max_image_pixels=args.max_image_pixels)
    elif args.engine == "onnx":
        from ..deploy.detector import Detector

        predictor = Detector.from_run(
            args.run, args.checkpoint, engine="onnx", max_image_pixels=args.max_image_pixels
        )
    else:
        from ..deploy.predict import Predictor

        predictor = Predictor.from_run(args.run, args.checkpoint, args.device, args.max_image_pixels)
    # No output replaces an input or a file predict did not write (docs/failure-behaviour.md);
    # checked before any image is scored (after the run, whose errors come first).
    plan_outputs(collect_image_paths(args.paths), output, heatmaps, args.overwrite)
    previous = output.exists()
    try:
        counts = predict_to_csv(
            predictor,
            args.paths,
            output,
            heatmaps,
            args.batch_size,
            args.workers,
            args.skip_bad_images,
            overwrite=args.overwrite,
        )
    except WriteError as exc:
        kept = f"{output} is unchanged" if previous else f"{output} was not written"
        raise UserError(f"{exc}; {kept}") from None
    except KeyboardInterrupt:
        print(
            f"interrupted; the rows scored so far are in {partial_path(output)}, and {output} is unchanged",
            file=sys.stderr,
        )
        return 130
    skipped = ""
    if counts["skipped"]:
        first = counts["skipped_files"][0][0] if counts["skipped_files"] else "?"
        skipped = (
            f", {counts['skipped']} unreadable skipped ({first}"
            + (" and others" if counts["skipped"] > 1 else "")
            + f"; listed in {skipped_list_path(output)})"
        )
    print(
        f"scored {counts['scored']} images: {counts['anomalous']} anomalous at threshold "
        f"{predictor.normalization.threshold:.3f}{skipped}; wrote {output}"
        + (f" and heatmaps in {heatmaps}" if heatmaps else "")
    )
    return 0

"""``skipganomaly benchmark``: training and scoring speed, plain versus optimised."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..specs.errors import UserError
from .options import add_common

NAME = "benchmark"


def add_parser(verbs) -> None:
    bench = verbs.add_parser(
        NAME,
        help="measure training and scoring speed, plain versus optimised",
        description=(
            "Measure training and scoring images/s and peak memory of a plain implementation (fp32, "
            "eager, the official code's procedure) and of this package's optimised one, in one "
            "process with interleaved rounds, on synthetic images; print medians and ratios."
        ),
    )
    bench.add_argument(
        "--sizes", default="32,128", metavar="N,N", help="image sizes, comma-separated (default 32,128)"
    )
    bench.add_argument("--batch-size", type=int, default=64, metavar="N", help="training batch (default 64)")
    bench.add_argument(
        "--score-batch-size", type=int, default=256, metavar="N", help="optimised scoring batch (default 256)"
    )
    bench.add_argument(
        "--steps", type=int, default=3, metavar="N", help="training steps per round (default 3)"
    )
    bench.add_argument(
        "--score-images", type=int, default=512, metavar="N", help="images scored per round (default 512)"
    )
    bench.add_argument("--repeats", type=int, default=5, metavar="N", help="timed rounds (default 5)")
    bench.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed rounds first (default 1)")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument(
        "--precision", default="auto", choices=["fp32", "bf16", "auto"], help="optimised mode's precision"
    )
    bench.add_argument(
        "--no-channels-last",
        action="store_true",
        help="optimised mode in the default memory format instead of channels_last",
    )
    bench.add_argument(
        "--threads",
        default="0",
        metavar="N|auto",
        help="the optimised mode's intra-op threads: 0 (default) fixed from the machine as train "
        "chooses them; N; or auto, which follows the load as train.threads=auto does (not reproducible)",
    )
    bench.add_argument("--ngf", type=int, default=64, metavar="N", help="generator width (default 64)")
    bench.add_argument("--ndf", type=int, default=64, metavar="N", help="discriminator width (default 64)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    bench.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="run N busy processes beside the measurement (a shared machine; stopped at the end)",
    )
    bench.add_argument(
        "--busy-kind",
        default="spin",
        choices=["spin", "train"],
        help="what each busy process does: spin one core, or train the model on one thread (default spin)",
    )
    bench.add_argument("--json", metavar="FILE.json", help="also write the figures as JSON")
    bench.add_argument(
        "--overwrite", action="store_true", help="replace a file at --json that is not an earlier benchmark's"
    )
    add_common(bench)


def run(args: argparse.Namespace) -> int:
    try:
        sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sizes {args.sizes!r}: give image sizes like 32,128") from None
    for size in sizes:
        if size < 16 or size > 256 or size & (size - 1):
            raise UserError(f"--sizes: {size} is not a power of two from 16 to 256")
    threads: int | str = args.threads.strip().lower()
    if threads != "auto":
        if not threads.isdigit():
            raise UserError(f"--threads {args.threads!r}: use 0, a positive number, or auto")
        threads = int(threads)
    if not 0 <= args.busy <= 64:
        raise UserError(f"--busy {args.busy}: use 0 to 64 busy processes")
    for name in ("batch_size", "score_batch_size", "steps", "score_images", "repeats", "ngf", "ndf"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.batch_size < 2:
        raise UserError("--batch-size must be at least 2 (BatchNorm needs a batch)")
    from ..benchmark import BenchmarkSettings, run_benchmark
    from ..runtime.files import check_output_file, write_json
    from ..runtime.outputs import check_replaceable, json_with_keys

    if args.json:  # before minutes of measuring
        check_output_file(Path(args.json), "--json", "benchmark.json")
        check_replaceable(
            args.json, "--json", json_with_keys("machine", "results"), "a benchmark's JSON", args.overwrite
        )

    settings = BenchmarkSettings(
        sizes=sizes,
        batch_size=args.batch_size,
        score_batch_size=args.score_batch_size,
        steps=args.steps,
        score_images=args.score_images,
        repeats=args.repeats,
        warmup=max(args.warmup, 0),
        device=args.device,
        precision=args.precision,
        channels_last=not args.no_channels_last,
        threads=threads,
        ngf=args.ngf,
        ndf=args.ndf,
        memory=not args.no_memory,
        busy=args.busy,
        busy_kind=args.busy_kind,
    )
    report = run_benchmark(settings)
    if args.json:
        write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0

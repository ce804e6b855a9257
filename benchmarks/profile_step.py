"""Where one training step spends its time: torch.profiler over a few steps of the optimised
trainer (and of the plain mode with ``--plain``), operators by self CPU time, then the largest
operators by input shape.

    python benchmarks/profile_step.py --size 32 --steps 3
    python benchmarks/profile_step.py --size 32 --precision bf16 --threads 1 --plain

Figures are milliseconds per step; on a shared machine read the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

import skipganomaly  # noqa: F401  (before PyTorch: it asks OpenMP threads to wait passively)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (default: as training chooses)"
    )
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="also profile the plain mode's step")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from skipganomaly.benchmark import BenchmarkSettings, OptimisedMode, PlainMode, synthetic_splits
    from skipganomaly.data.loading import to_model_input

    settings = BenchmarkSettings(
        precision=args.precision,
        threads=args.threads,
        ngf=args.ngf,
        ndf=args.ngf,
        channels_last=not args.no_channels_last,
        batch_size=args.batch_size,
    )
    splits = synthetic_splits(args.batch_size, 16, args.size, 3)
    trainer = OptimisedMode(settings, args.size, splits, tempfile.mkdtemp()).trainer
    images = torch.from_numpy(splits.train.images).permute(0, 3, 1, 2)
    steps = {
        "optimised": lambda: trainer.train_step(
            to_model_input(images, trainer.device, settings.channels_last)
        )
    }
    if args.plain:
        plain = PlainMode(trainer.model, trainer.device, args.batch_size)
        steps["plain"] = lambda: plain.train_step(to_model_input(images, trainer.device, False))
    print(
        f"{args.size} px, batch {args.batch_size}, {trainer.precision.describe()}, {torch.get_num_threads()} thread(s), "
        f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    for name, step in steps.items():
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.steps):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
        print(f"\n{name}: {total:.0f} ms of operator time per step")
        print(f"  {'operator':<42} {'ms/step':>8} {'share':>6} {'calls':>6}")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            ms = e.self_cpu_time_total / 1e3 / args.steps
            print(f"  {e.key[:42]:<42} {ms:8.1f} {ms / total:6.1%} {e.count // args.steps:6d}")
        by_shape: dict[tuple[str, str], float] = collections.defaultdict(float)
        for e in prof.events():
            if e.name in (
                "aten::convolution_backward",
                "aten::_convolution",
                "aten::mkldnn_convolution",
                "aten::copy_",
            ):
                by_shape[(e.name, str(e.input_shapes[:2]))] += e.self_cpu_time_total / 1e3 / args.steps
        print("  largest by input shapes:")
        for (op, shapes), ms in sorted(by_shape.items(), key=lambda kv: -kv[1])[:10]:
            print(f"    {op:<28} {shapes:<44} {ms:8.1f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())

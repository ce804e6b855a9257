"""Why training slows down on a busy machine: one training step under contention, per thread count
and OpenMP wait policy, with the scheduler's counts and the operators that grew.

    python benchmarks/contention.py --size 32 --rounds 6
    python benchmarks/contention.py --size 32 --conditions quiet,spin --wait-policies PASSIVE,ACTIVE --profile

For each condition (``quiet``; ``spin``: one process spinning one core; ``train``: a 1-thread
training of the same model beside), in one process with interleaved rounds, the training step of
the plain mode (the official procedure) and of the optimised one (``Trainer.train_step``), each with
every thread count asked for. Per variant: median images/s, its ratio to plain with all cores,
and per step the voluntary context switches (a thread that waits at a barrier and sleeps) and
involuntary ones (a thread preempted by another process). ``--profile`` adds, for the optimised
step with all cores, the operators whose time grew most from ``quiet`` to each busy condition
(torch.profiler, self CPU time). Each wait policy runs in a process of its own (libgomp reads
``OMP_WAIT_POLICY`` when it loads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

WAIT_POLICIES = ("PASSIVE", "ACTIVE", "DEFAULT")  # DEFAULT: unset, PyTorch imported first (libgomp's own)


def measure(args: argparse.Namespace) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from skipganomaly.benchmark import (
        BenchmarkSettings,
        BusyProcesses,
        OptimisedMode,
        PlainMode,
        synthetic_splits,
    )
    from skipganomaly.data.loading import to_model_input

    threads = [int(t) for t in args.threads.split(",")]
    settings = BenchmarkSettings(precision=args.precision, threads=max(threads), ngf=args.ngf, ndf=args.ngf)
    splits = synthetic_splits(args.batch_size, 16, args.size, 3)
    trainer = OptimisedMode(settings, args.size, splits, tempfile.mkdtemp()).trainer
    images = torch.from_numpy(splits.train.images).permute(0, 3, 1, 2)
    x_optimised = to_model_input(images, trainer.device, trainer.config.train.channels_last)
    x_plain = to_model_input(images, trainer.device, False)
    plain = PlainMode(trainer.model, trainer.device, args.batch_size)
    steps = {}
    for count in threads:
        steps[f"plain@{count}"] = (count, lambda: plain.train_step(x_plain))
        steps[f"optimised@{count}"] = (count, lambda: trainer.train_step(x_optimised))
    reference = f"plain@{max(threads)}"
    from skipganomaly.runtime.threads import openmp_wait_policy

    report = {"wait_policy": openmp_wait_policy()[0], "conditions": {}}
    profiles = {}
    for condition in args.conditions.split(","):
        kind = {"quiet": None, "spin": "spin", "train": "train"}[condition]
        with BusyProcesses(1 if kind else 0, kind or "spin"):
            time.sleep(1.0)
            times = {name: [] for name in steps}
            switches = {name: [] for name in steps}
            load_start = os.getloadavg()
            for round_index in range(args.rounds + 1):
                for name, (count, step) in steps.items():
                    torch.set_num_threads(count)
                    before = resource.getrusage(resource.RUSAGE_SELF)
                    started = time.perf_counter()
                    step()
                    seconds = time.perf_counter() - started
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    if round_index:  # the first round warms up
                        times[name].append(seconds)
                        switches[name].append(
                            (after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw)
                        )
            if args.profile:
                torch.set_num_threads(max(threads))
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(2):
                        trainer.train_step(x_optimised)
                profiles[condition] = {
                    e.key: (e.self_cpu_time_total / 2e3, e.count // 2) for e in prof.key_averages()
                }
            rows = {}
            for name in steps:
                ratios = [r / t for r, t in zip(times[reference], times[name], strict=True)]
                rows[name] = {
                    "img_s": args.batch_size / statistics.median(times[name]),
                    "ratio_to_" + reference: statistics.median(ratios),
                    "voluntary_switches_per_step": statistics.median(v for v, _ in switches[name]),
                    "involuntary_switches_per_step": statistics.median(i for _, i in switches[name]),
                }
            report["conditions"][condition] = {
                "variants": rows,
                "load_average": [load_start, os.getloadavg()],
            }
    if args.profile and "quiet" in profiles:
        quiet = profiles["quiet"]
        for condition, ops in profiles.items():
            if condition == "quiet":
                continue
            growth = sorted(
                ((ms - quiet.get(name, (0.0, 0))[0], name, quiet.get(name, (0.0, 0))[0], ms, calls)
                 for name, (ms, calls) in ops.items()),
                reverse=True,
            )  # fmt: skip
            report["conditions"][condition]["grew_most"] = [
                {"op": name, "quiet_ms": q, "busy_ms": b, "calls_per_step": c}
                for _, name, q, b, c in growth[:12]
            ]
        report["quiet_top_ops"] = [
            {"op": name, "ms": ms, "calls_per_step": calls}
            for name, (ms, calls) in sorted(quiet.items(), key=lambda kv: -kv[1][0])[:12]
        ]
    return report


def print_report(report: dict, batch: int) -> None:
    print(f"\nOMP_WAIT_POLICY={report['wait_policy']}")
    for condition, data in report["conditions"].items():
        load = ", ".join(f"{v:.1f}" for v in data["load_average"][0])
        print(f"  {condition} (load average at the start {load}):")
        for name, row in data["variants"].items():
            ratio = next(v for k, v in row.items() if k.startswith("ratio_to_"))
            print(
                f"    {name:<13} {row['img_s']:7.1f} img/s  x{ratio:4.2f}  context switches per step: "
                f"{row['voluntary_switches_per_step']:7.0f} voluntary, {row['involuntary_switches_per_step']:6.0f} involuntary"
            )
        for op in data.get("grew_most", []):
            print(
                f"      {op['op']:<40} {op['quiet_ms']:8.1f} -> {op['busy_ms']:8.1f} ms/step ({op['calls_per_step']} calls)"
            )
    for op in report.get("quiet_top_ops", []):
        print(f"  quiet: {op['op']:<40} {op['ms']:8.1f} ms/step ({op['calls_per_step']} calls)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--threads", default="", help="thread counts to compare (default: all cores and 1)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--conditions", default="quiet,spin,train")
    parser.add_argument(
        "--wait-policies",
        default="PASSIVE",
        help="comma-separated: PASSIVE, ACTIVE, DEFAULT (unset, PyTorch imported before skipganomaly)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile the optimised step per condition"
    )
    parser.add_argument("--json", help="write the reports here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.threads:
        from skipganomaly.runtime.cores import available_cores

        cores = available_cores()
        args.threads = f"{cores},1" if cores > 1 else "1"
    if args.child:
        if os.environ.get("OMP_WAIT_POLICY") == "DEFAULT":
            del os.environ["OMP_WAIT_POLICY"]
            import torch  # noqa: F401  (before skipganomaly: libgomp starts with its default policy)
        import skipganomaly  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE if unset and PyTorch not loaded)

        print(json.dumps(measure(args)))
        return 0
    reports = []
    for policy in args.wait_policies.split(","):
        if policy not in WAIT_POLICIES:
            parser.error(f"--wait-policies: {policy!r} is not one of {', '.join(WAIT_POLICIES)}")
        argv = [a for a in sys.argv[1:]] + ["--child", "--threads", args.threads]
        env = dict(os.environ, OMP_WAIT_POLICY=policy)
        done = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        report = json.loads(done.stdout.strip().splitlines()[-1])
        print_report(report, args.batch_size)
        reports.append(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fidelity check: the official Skip-GANomaly code and ours, trained side by side at matched settings.

    python benchmarks/fidelity.py --official /path/to/skip-ganomaly \
        --official-python /path/to/venv/bin/python --data-root /path/to/cifar10 \
        --classes automobile bird cat --epochs 3 --ngf 16 --ndf 16

Both sides read the same CIFAR-10 images in the same order, with the same width, epochs, batch
size (64), and the official defaults (our ``reference`` preset: Adam lr 2e-4, beta1 0.5,
w_adv 1, w_con 50, w_lat 1, constant learning rate, no input noise). Per class and epoch it
prints the official code's AUROC (its own test: train-mode BatchNorm over its test set), ours
under the ``paper`` protocol (the same procedure, ``eval.paper_each_epoch``), their difference,
and our honest figure from the same training (eval mode, the ``val-split`` test half). Both sides
report every epoch; compare epoch by epoch (the official code then keeps its best epoch, chosen
on the test set).

* ``--official``: a checkout of https://github.com/samet-akcay/skip-ganomaly, patched only so it
  runs on current PyTorch (docs/fidelity-check.md says what to change). Nothing of it is copied
  here; it runs in its own interpreter (``--official-python``, which needs torchvision), started
  by the small launcher in ``fidelity_runs.py``, which only makes torchvision accept converted
  CIFAR-10 batches (their MD5s are not the published ones) and reports the official model's
  input-noise buffer.
* ``--data-root``: CIFAR-10 as python batches (``cifar-10-batches-py``) or as class folders
  ``train/<class>/*`` and ``test/<class>/*`` (or an archive of them). Class folders are converted
  once into python batches in a seeded, class-mixed order (``--order-seed``) under ``--work``, and
  both sides read those: the official code through torchvision, ours through its CIFAR-10 reader.

Runs are kept under ``--work`` (default: the skipganomaly cache, ``fidelity/``) and reused when
complete, so an interrupted check continues where it stopped; ``--fresh`` retrains. Exits 0 with
a message, training nothing, when the official checkout or the data is absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from skipganomaly.data.cifar import CLASS_NAMES
from skipganomaly.runtime.files import cache_root

# The helper modules beside this script (on the path already when it runs as a script, not when
# it is loaded from its file, as the tests do).
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.append(HERE)

from fidelity_runs import resolve_batches, run_official, run_ours  # noqa: E402
from fidelity_weights import cross_score, print_steps  # noqa: E402


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="checkout of samet-akcay/skip-ganomaly (patched)")
    parser.add_argument("--official-python", default=sys.executable, help="interpreter with torchvision")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10: python batches or class folders")
    parser.add_argument("--classes", nargs="+", default=["automobile", "bird", "cat"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--ndf", type=int, default=16)
    parser.add_argument("--nz", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="training seed of both sides")
    parser.add_argument("--order-seed", type=int, default=0, help="image order of converted class folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", choices=["both", "official", "ours"], default="both")
    parser.add_argument("--work", type=Path, help="where batches and runs are kept (default: cache/fidelity)")
    parser.add_argument("--fresh", action="store_true", help="retrain even where a complete run exists")
    parser.add_argument(
        "--cross-score",
        action="store_true",
        help="also score the official code's saved weights with our paper protocol (same weights)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="instead of training: compare the first N steps from the same initial weights",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.official is None or not (args.official / "train.py").is_file():
        print(f"skipped: no official checkout (--official {args.official}; it needs train.py)")
        return 0
    if args.data_root is None or not args.data_root.exists():
        print(f"skipped: no CIFAR-10 data (--data-root {args.data_root})")
        return 0
    unknown = [c for c in args.classes if c not in CLASS_NAMES]
    if unknown:
        parser.error(f"unknown classes {unknown}; choose from {', '.join(CLASS_NAMES)}")
    official_torch = None
    if args.sides != "ours":
        probe = subprocess.run(
            [args.official_python, "-c", "import torch, torchvision; print(torch.__version__)"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            print(
                f"--official-python {args.official_python} cannot import torch and torchvision",
                file=sys.stderr,
            )
            return 2
        official_torch = probe.stdout.strip()
    work = args.work or cache_root() / "fidelity"
    work.mkdir(parents=True, exist_ok=True)
    batches = resolve_batches(args.data_root, work, args.order_seed)
    if batches is None:
        print(
            f"skipped: {args.data_root} holds neither cifar-10-batches-py nor train/ and test/ class folders"
        )
        return 0

    tag = f"e{args.epochs}-ngf{args.ngf}-ndf{args.ndf}-nz{args.nz}-b{args.batch_size}-s{args.seed}"
    tag += f"-order{args.order_seed}"
    if args.steps:
        return print_steps(args, batches, work, tag)
    results: dict[str, dict] = {}
    for name in args.classes:
        print(f"{name}:", flush=True)
        results[name] = {}
        if args.sides in ("both", "official"):
            results[name]["official"] = run_official(
                args, batches, name, work / "runs" / f"official-{name}-{tag}"
            )
        if args.sides in ("both", "ours"):
            results[name]["ours"] = run_ours(args, batches, name, work / "runs" / f"ours-{name}-{tag}")
        if args.cross_score and "official" in results[name]:
            official_dir = work / "runs" / f"official-{name}-{tag}"
            results[name]["same_weights"] = cross_score(
                args,
                batches,
                name,
                official_dir,
                results[name]["official"],
                work / "runs" / f"ours-{name}-{tag}",
            )

    print_results(args, batches, results, official_torch)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": vars(args) | {"batches": str(batches)}, "results": results},
                indent=2,
                default=str,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


def print_results(args, batches: Path, results: dict[str, dict], official_torch: str | None) -> None:
    """The table per class and epoch (official, ours under the paper protocol, their difference,
    ours honest), the same weights scored both ways (``--cross-score``) and the times."""
    print(
        f"\nCIFAR-10, {args.epochs} epoch(s), ngf {args.ngf}, ndf {args.ndf}, nz {args.nz}, batch "
        f"{args.batch_size}, seed {args.seed}, lr 2e-4, w_con 50 (reference preset); data {batches}"
    )
    if args.sides != "ours":
        print(f"official code on torch {official_torch}; ours on torch {__import__('torch').__version__}")
    print(f"{'class':<11} {'epoch':>5} {'official':>9} {'ours paper':>10} {'diff':>7} {'ours honest':>11}")
    for name, sides in results.items():
        for epoch in range(args.epochs):
            official = sides.get("official", {}).get("paper_auroc", [None] * args.epochs)[epoch]
            ours = sides.get("ours", {})
            paper = ours.get("paper_auroc", [None] * args.epochs)[epoch]
            honest = ours.get("honest_test_auroc", [None] * args.epochs)[epoch]

            def cell(value, width, sign=""):
                return f"{value:>{sign}{width}.3f}" if value is not None else f"{'-':>{width}}"

            diff = paper - official if paper is not None and official is not None else None
            print(
                f"{name:<11} {epoch + 1:>5} {cell(official, 9)} {cell(paper, 10)} {cell(diff, 7, '+')} "
                f"{cell(honest, 11)}"
            )
    if args.cross_score:
        print(
            "\nThe same weights scored both ways (paper protocol set, order and batches; train-mode BatchNorm), "
            "and each term alone (AUROC; its mean over the normal images)"
        )
        print(
            f"{'class':<11} {'weights':<9} {'epoch':>5} {'reported':>9} {'squared R':>10} {'L1 R (ours)':>11} "
            f"{'R squared':>15} {'R L1':>15} {'L':>15}"
        )
        for name, sides in results.items():
            for row in sides.get("same_weights", []):
                terms = " ".join(
                    f"{row[f'auroc_{k}']:>6.3f} ({row[f'mean_normal_{k}']:.4f})"
                    for k in ("r_squared", "r_l1", "latent")
                )
                print(
                    f"{name:<11} {row['weights']:<9} {row['epoch']:>5} {row['reported']:>9.3f} "
                    f"{row['scored_squared']:>10.4f} {row['scored_l1']:>11.4f} {terms}"
                )
    for name, sides in results.items():
        seconds = ", ".join(
            f"{side} {values['seconds']:.0f} s" for side, values in sides.items() if isinstance(values, dict)
        )
        print(f"{name}: training and scoring time {seconds}")


if __name__ == "__main__":
    sys.exit(main())

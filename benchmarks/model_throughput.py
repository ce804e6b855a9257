"""Training and scoring throughput of every model, in images per second, on random inputs.

AnoGAN's scoring runs its per-image latent search (``--search-steps`` Adam steps, each a forward
and backward pass through G and D), so its cost grows linearly with the steps; the other models
score with one forward pass. Prints a Markdown table; nothing is asserted.

    python benchmarks/model_throughput.py                         # 32 px RGB, the default widths
    python benchmarks/model_throughput.py --image-size 16 --width 16 --threads 1 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import torch

from skipganomaly.models import MODELS, build_model, model_args
from skipganomaly.models.objective import LossWeights
from skipganomaly.specs.config import ModelConfig


def images_per_second(step, batch: int, repeats: int, device: torch.device) -> float:
    def timed():
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    timed()  # warm-up: allocations, kernel selection
    started = time.perf_counter()
    for _ in range(repeats):
        timed()
    return batch * repeats / (time.perf_counter() - started)


def measure(model, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(training images/s, scoring images/s) of one model on the batch ``x``."""
    groups = model.parameter_groups()
    optimizers = [torch.optim.Adam(p, lr=2e-4, betas=(0.5, 0.999)) for p in groups.values()]

    def train_step():
        model.train()
        losses = model.training_losses(x, LossWeights())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses.generator.backward(inputs=groups["generator"], retain_graph=True)
        losses.discriminator.backward(inputs=groups["discriminator"])
        for opt in optimizers:
            opt.step()

    def score_step():  # as skipganomaly.scoring.engine.score_set scores
        model.eval()
        with torch.no_grad() if model.score_needs_grad else torch.inference_mode():
            model.score(x, 0.9)

    batch = len(x)
    return images_per_second(train_step, batch, repeats, x.device), images_per_second(
        score_step, batch, repeats, x.device
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--width", type=int, default=64, help="ngf = ndf (default 64)")
    parser.add_argument("--nz", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--search-steps", type=int, nargs="+", default=[ModelConfig.latent_search_steps])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.rand(args.batch_size, args.channels, args.image_size, args.image_size, device=device) * 2 - 1
    print(
        f"{args.image_size}x{args.image_size}x{args.channels}, ngf=ndf={args.width}, nz={args.nz}, "
        f"batch {args.batch_size}, {device}, {torch.get_num_threads()} threads"
    )
    print("| model | train images/s | score images/s |\n|---|---|---|")
    for name in args.models:
        config = ModelConfig(name=name, ngf=args.width, ndf=args.width, nz=args.nz)
        variants = args.search_steps if name == "anogan" else [None]
        for steps in variants:
            if steps is not None:
                config.latent_search_steps = steps
            model = build_model(name, **model_args(config, args.image_size, args.channels)).to(device)
            train, score = measure(model, x, args.repeats)
            label = name if steps is None else f"{name} ({steps} search steps)"
            print(f"| {label} | {train:,.0f} | {score:,.1f} |")


if __name__ == "__main__":
    main()

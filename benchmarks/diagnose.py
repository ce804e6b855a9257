"""Diagnose Skip-GANomaly training: many anomaly scores of the same weights, every epoch.

Trains one run with the ordinary Trainer and, after every epoch, scores validation and test in
eval mode with several score variants computed from the same forward passes, plus the same for
(a) BatchNorm statistics re-estimated on training batches and (b) an exponential moving average of
the weights. Writes RUN/diagnosis.jsonl (one record per epoch) and prints a compact line.

    python benchmarks/diagnose.py --output /work/exp/diag/digits0 -- --dataset digits --abnormal-class 0 --epochs 15
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skipganomaly.cli import build_parser, resolve_train_config
from skipganomaly.data import prepare_data
from skipganomaly.data.loading import epoch_order, iterate_batches, to_model_input
from skipganomaly.scoring.metrics import auroc
from skipganomaly.training.trainer import Trainer


def d_layer_outputs(discriminator: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Activations after each LeakyReLU of D's trunk, and the final features f(x)."""
    outs = []
    h = x
    for layer in discriminator.features.layers:
        h = layer(h)
        if isinstance(layer, nn.LeakyReLU):
            outs.append(h)
    return outs, h.flatten(1)


@torch.no_grad()
def forward_scores(model, x: torch.Tensor, skips_off: bool = False) -> dict[str, torch.Tensor]:
    g = model.generator
    x_hat = g.forward_without_skips(x) if skips_off and hasattr(g, "forward_without_skips") else g(x)
    diff = (x - x_hat).abs()
    maps = diff.mean(1)  # N,H,W
    flat = maps.flatten(1)
    n_pix = flat.shape[1]
    out: dict[str, torch.Tensor] = {}
    out["R"] = flat.mean(1)
    out["R_sq"] = (x - x_hat).pow(2).flatten(1).mean(1)
    for frac in (0.01, 0.05, 0.2):
        k = max(1, int(round(frac * n_pix)))
        out[f"R_top{int(frac * 100)}"] = flat.topk(k, dim=1).values.mean(1)
    k = max(3, maps.shape[-1] // 8) | 1
    blurred = F.avg_pool2d(maps[:, None], k, stride=1, padding=k // 2)
    out["R_blurmax"] = blurred.flatten(1).amax(1)
    layers_real, f_real = d_layer_outputs(model.discriminator, x)
    layers_fake, f_fake = d_layer_outputs(model.discriminator, x_hat)
    out["L"] = (f_real - f_fake).pow(2).mean(1)
    for i, (a, b) in enumerate(zip(layers_real, layers_fake, strict=True)):
        out[f"Lmid{i}"] = (a - b).pow(2).flatten(1).mean(1)
    out["A"] = 0.9 * out["R"] + 0.1 * out["L"]
    # input complexity: the error of a generic reconstruction (2x box down- and up-sampling) and
    # the mean gradient magnitude; scores relative to them (Serra et al., ICLR 2020)
    blur = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    complexity = (x - blur).abs().flatten(1).mean(1) + 1e-4
    grad = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1) + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().flatten(1).mean(1)
    out["R_over_C"] = out["R"] / complexity
    out["R_over_grad"] = out["R"] / (grad + 1e-4)
    out["L_over_C"] = out["L"] / complexity
    out["_pix"] = F.avg_pool2d(x, max(1, x.shape[-1] // 8)).flatten(1)
    logit = model.discriminator.classifier(f_real[:, :, None, None]).flatten()
    out["D_fake"] = -logit
    out["_feat"] = f_real
    head = getattr(model.discriminator, "rotation", None)
    if head is not None:
        losses = []
        for k in range(4):
            feats = model.discriminator.features(torch.rot90(x, k, dims=(2, 3))).flatten(1)
            target = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            losses.append(F.cross_entropy(head(feats), target, reduction="none"))
        out["ROT"] = torch.stack(losses).mean(0)
    # G's bottleneck (the 1x1 map) for kNN in G's latent space
    h = x
    for block in g.down:
        h = block(h)
    out["_z"] = h.flatten(1)
    return out


@torch.no_grad()
def score_sets(model, image_sets: dict, cfg, channels, device, skips_off=False) -> dict:
    model.eval()
    results = {}
    for name, image_set in image_sets.items():
        acc: dict[str, list] = {}
        labels = []
        for batch in iterate_batches(
            image_set, 512, image_size=cfg.data.image_size, channels=channels, device=device
        ):
            x = to_model_input(batch.images, device, cfg.train.channels_last)
            for key, value in forward_scores(model, x, skips_off).items():
                acc.setdefault(key, []).append(value.float().cpu())
            labels.append(batch.labels)
        results[name] = {k: torch.cat(v).numpy() for k, v in acc.items()}
        results[name]["_labels"] = torch.cat(labels).numpy()
    return results


def dump_scores(path: Path, results: dict, train_feats: dict | None) -> None:
    """Per-image component scores (val, test), for combining them offline."""
    arrays = {}
    for split, scores in results.items():
        for key, value in scores.items():
            if not key.startswith("_") or key == "_labels":
                arrays[f"{split}/{key}"] = np.asarray(value, dtype=np.float32)
        if train_feats is not None:
            arrays[f"{split}/knn_f"] = knn_score(train_feats["_feat"], scores["_feat"]).astype(np.float32)
            arrays[f"{split}/knn_pix"] = knn_score(train_feats["_pix"], scores["_pix"]).astype(np.float32)
    np.savez_compressed(path, **arrays)


def knn_score(train_feat: np.ndarray, feat: np.ndarray, k: int = 5) -> np.ndarray:
    a = torch.from_numpy(feat)
    b = torch.from_numpy(train_feat)
    d = torch.cdist(a, b)
    return d.topk(k, largest=False).values.mean(1).numpy()


def summarize(results: dict, train_feats: dict | None, normal_stats: bool = True) -> dict:
    """AUROC of every variant on val and test, plus mean scores of normals and anomalies."""
    summary: dict = {}
    val = results["val"]
    val_normal = val["_labels"] == 0
    for split, scores in results.items():
        labels = scores["_labels"]
        row = {}
        for key, value in scores.items():
            if key.startswith("_"):
                continue
            row[key] = auroc(labels, value)
        # z-scored R + L combination, standardised on normal validation images
        zr = (scores["R"] - val["R"][val_normal].mean()) / (val["R"][val_normal].std() + 1e-12)
        zl = (scores["L"] - val["L"][val_normal].mean()) / (val["L"][val_normal].std() + 1e-12)
        row["A_z"] = auroc(labels, 0.5 * zr + 0.5 * zl)
        if train_feats is not None:
            row["knn_f"] = auroc(labels, knn_score(train_feats["_feat"], scores["_feat"]))
            row["knn_z"] = auroc(labels, knn_score(train_feats["_z"], scores["_z"]))
            row["knn_pix"] = auroc(labels, knn_score(train_feats["_pix"], scores["_pix"]))
            mu = train_feats["_feat"].mean(0)
            cov = np.cov(train_feats["_feat"], rowvar=False) + 1e-3 * np.eye(mu.shape[0])
            prec = np.linalg.inv(cov)
            d = scores["_feat"] - mu
            row["maha_f"] = auroc(labels, np.einsum("ij,jk,ik->i", d, prec, d))
        row["R_normal"] = float(scores["R"][labels == 0].mean())
        row["R_abnormal"] = float(scores["R"][labels == 1].mean())
        summary[split] = row
    return summary


@torch.no_grad()
def recalibrate_bn(model, image_set, cfg, channels, device, batches: int = 50, seed: int = 1234):
    """Re-estimate every BatchNorm's running statistics on training batches at the current
    weights, passing D real and fake batches apart as training does."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    order = epoch_order(len(image_set), seed, 0)
    for i, batch in enumerate(
        iterate_batches(
            image_set,
            cfg.data.batch_size,
            image_size=cfg.data.image_size,
            channels=channels,
            order=order,
            drop_last=True,
            device=device,
        )
    ):
        if i >= batches:
            break
        x = to_model_input(batch.images, device, cfg.train.channels_last)
        x_hat = model.generator(x)
        model.discriminator(x)
        model.discriminator(x_hat)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--recal-batches", type=int, default=50)
    parser.add_argument("--train-feats", type=int, default=4000, help="training images for kNN scores")
    parser.add_argument("--skips-off", action="store_true", help="also score with the skips removed")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    targs = build_parser().parse_args(["train", *train_args, "--output", args.output, "--quiet"])
    config = resolve_train_config(targs)
    splits = prepare_data(config.data)
    run_dir = Path(args.output)
    trainer = Trainer(config, splits, run_dir, progress=False)
    channels = splits.channels
    device = trainer.device
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(splits.train), min(args.train_feats, len(splits.train)), replace=False))
    train_sub = splits.train.subset(pick)
    sets = {"val": splits.val, "test": splits.test}
    out_path = run_dir / "diagnosis.jsonl"

    def diagnose(tr: Trainer, epoch: int) -> None:
        started = time.perf_counter()
        record: dict = {"epoch": epoch}
        variants = {"live": tr.model}
        if trainer.average is not None:  # --set train.ema_decay=0.999
            variants["ema"] = trainer.average.model
        for name, model in variants.items():
            res = score_sets(model, sets | {"train": train_sub}, config, channels, device)
            train_feats = res.pop("train")
            record[name] = summarize(res, train_feats)
            dump_scores(run_dir / f"scores-{name}-e{epoch:03d}.npz", res, train_feats)
            if args.skips_off:
                res = score_sets(model, sets, config, channels, device, skips_off=True)
                record[name + "_noskip"] = summarize(res, None)
            if args.recal_batches > 0:
                recal = copy.deepcopy(model)
                recalibrate_bn(recal, splits.train, config, channels, device, args.recal_batches, seed=epoch)
                res = score_sets(recal, sets | {"train": train_sub}, config, channels, device)
                train_feats = res.pop("train")
                record[name + "_recal"] = summarize(res, train_feats)
        last = tr.history[-1]
        record["losses"] = last["losses"]
        record["trainer_val_auroc"] = last["val"]["auroc"]
        record["seconds_diag"] = time.perf_counter() - started
        with out_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        keys = ["A", "R", "L", "R_top5", "A_z", "knn_f"]
        parts = []
        for name in ("live", "live_recal", "ema", "ema_recal"):
            if name in record:
                v = record[name]["val"]
                parts.append(name + " " + " ".join(f"{k}={v[k]:.3f}" for k in keys if k in v))
        print(f"epoch {epoch}: " + " | ".join(parts), flush=True)

    trainer.callbacks.append(diagnose)
    trainer.log = lambda m: print(m, flush=True)
    trainer.fit()
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())

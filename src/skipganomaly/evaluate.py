"""Scoring image sets and turning scores into metrics, normalisation and thresholds.

Honest scoring: networks in eval mode (BatchNorm running statistics), under ``inference_mode`` (or
``no_grad`` for a model whose ``score_needs_grad``), so an image's score does not depend on the
other images in its batch or on the order of the set.
The ``paper`` protocol alone scores with BatchNorm in training mode, as the official code does;
it saves and restores the BatchNorm buffers so that scoring leaves the model unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import Config, EvalConfig
from .data.base import ImageSet, Splits
from .data.images import load_mask
from .data.loading import BadImageCounter, Batch, iterate_batches, to_model_input
from .metrics import best_f1_threshold, detection_summary, pixel_auroc
from .objective import ScoreNormalization, ScoreOutput
from .runtime import autocast

# Heatmaps are drawn on a fixed scale: this quantile of the per-pixel errors of normal validation
# images is the middle of the colour scale; twice it saturates.
MAP_QUANTILE = 0.99
PIXEL_SAMPLE = 256


@dataclass
class ScoredSet:
    """Per-image scores of one image set, aligned with ``indices`` into that set."""

    score: np.ndarray
    reconstruction: np.ndarray
    latent: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    anomaly_maps: np.ndarray | None = None
    reconstructed: np.ndarray | None = None
    features: np.ndarray | None = None
    pixel_errors: np.ndarray | None = None
    skipped: int = 0


@contextlib.contextmanager
def batchnorm_train_mode(model: nn.Module):
    """Run ``model`` in training mode (batch statistics) and restore its BatchNorm buffers after.

    This reproduces how the official code scores; it leaks information between the images of a
    batch, which is why only the ``paper`` protocol uses it.
    """
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        model.train(was_training)


def scored_batches(
    model: nn.Module,
    image_set: ImageSet,
    *,
    image_size: int,
    channels: int,
    batch_size: int,
    device: torch.device,
    score_lambda: float = 0.9,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    details: bool = False,
    batchnorm_train: bool = False,
    workers: int = 0,
    skip_bad: bool = False,
    counter: BadImageCounter | None = None,
) -> Iterator[tuple[Batch, ScoreOutput]]:
    """Score ``image_set`` batch by batch, in its stored order: yields each batch with its
    :class:`ScoreOutput` moved to the CPU as float32, so a caller can stream results (``predict``
    writes them as they come) while memory stays bounded by one batch."""
    mode = batchnorm_train_mode(model) if batchnorm_train else _eval_mode(model)
    grad_mode = torch.no_grad if getattr(model, "score_needs_grad", False) else torch.inference_mode
    with mode:
        for batch in iterate_batches(
            image_set,
            batch_size,
            image_size=image_size,
            channels=channels,
            workers=workers,
            skip_bad=skip_bad,
            counter=counter,
            device=device,
        ):
            # Inference mode per batch, not around the yield: it is thread-local and would
            # otherwise stay on in the caller's code while this generator is suspended. A model
            # that searches at test time (AnoGAN) needs autograd: no_grad outside, and the model
            # enables gradients for its own search; every other model keeps inference_mode's speed.
            with grad_mode():
                x = to_model_input(batch.images, device, channels_last)
                with autocast(device, amp_dtype):
                    out = model.score(x, score_lambda, details=details)
                cpu = ScoreOutput(
                    **{
                        name: None if value is None else value.float().cpu()
                        for name, value in vars(out).items()
                    }
                )
            yield batch, cpu


def score_set(
    model: nn.Module,
    image_set: ImageSet,
    *,
    image_size: int,
    channels: int,
    batch_size: int,
    device: torch.device,
    score_lambda: float = 0.9,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    details: bool = False,
    batchnorm_train: bool = False,
    workers: int = 0,
    skip_bad: bool = False,
    pixel_sample: int = 0,
) -> ScoredSet:
    """Score every image of ``image_set`` in its stored order (Eq. 5, raw, unscaled).

    ``details`` keeps anomaly maps, reconstructions and features. ``pixel_sample`` > 0 keeps that
    many randomly drawn (seeded) anomaly-map pixels of each normal image, from which the run fixes
    the colour scale of its heatmaps without holding every map in memory.
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("score", "reconstruction", "latent", "labels", "indices")
    }
    extra: dict[str, list[np.ndarray]] = {"anomaly_maps": [], "reconstructed": [], "features": []}
    counter = BadImageCounter()
    pixels: list[np.ndarray] = []
    pixel_rng = torch.Generator().manual_seed(0)
    for batch, out in scored_batches(
        model,
        image_set,
        image_size=image_size,
        channels=channels,
        batch_size=batch_size,
        device=device,
        score_lambda=score_lambda,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        details=details or pixel_sample > 0,
        batchnorm_train=batchnorm_train,
        workers=workers,
        skip_bad=skip_bad,
        counter=counter,
    ):
        parts["score"].append(out.score.numpy())
        parts["reconstruction"].append(out.reconstruction.numpy())
        parts["latent"].append(out.latent.numpy())
        parts["labels"].append(batch.labels.numpy())
        parts["indices"].append(batch.indices.numpy())
        if details:
            extra["anomaly_maps"].append(out.anomaly_map.numpy().astype(np.float16))
            extra["reconstructed"].append(out.reconstructed.numpy().astype(np.float16))
            extra["features"].append(out.features.numpy())
        if pixel_sample > 0:
            maps = out.anomaly_map.flatten(1)[batch.labels <= 0]
            if len(maps):
                pick = torch.randint(maps.shape[1], (len(maps), pixel_sample), generator=pixel_rng)
                pixels.append(maps.gather(1, pick).numpy().ravel())

    def join(values: list[np.ndarray], dtype=None) -> np.ndarray:
        return np.concatenate(values) if values else np.zeros(0, dtype=dtype or np.float64)

    scored = ScoredSet(
        score=join(parts["score"]).astype(np.float64),
        reconstruction=join(parts["reconstruction"]).astype(np.float64),
        latent=join(parts["latent"]).astype(np.float64),
        labels=join(parts["labels"], np.int64).astype(np.int64),
        indices=join(parts["indices"], np.int64).astype(np.int64),
        skipped=counter.skipped,
        pixel_errors=np.concatenate(pixels) if pixels else None,
    )
    if details and parts["score"]:
        scored.anomaly_maps = np.concatenate(extra["anomaly_maps"])
        scored.reconstructed = np.concatenate(extra["reconstructed"])
        scored.features = np.concatenate(extra["features"])
    return scored


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def fit_normalization(val: ScoredSet, cfg: EvalConfig) -> ScoreNormalization:
    """Fix the deployment scaling and threshold on validation scores (never on test).

    Scaling: min and max raw score of the normal validation images. Threshold: the F1-best cut on
    validation when it holds labelled anomalies and ``eval.threshold`` is ``f1``; otherwise the
    ``eval.threshold_quantile`` quantile of the normal validation images' scaled scores.
    """
    normal = val.score[val.labels == 0]
    if len(normal) == 0:
        normal = val.score
    low, high = float(np.min(normal)), float(np.max(normal))
    normalization = ScoreNormalization(low=low, high=high, threshold=1.0)
    if val.pixel_errors is not None and len(val.pixel_errors):
        normalization.map_high = float(np.quantile(val.pixel_errors, MAP_QUANTILE))
    scaled = normalization(val.score)
    has_anomalies = bool((val.labels == 1).any() and (val.labels == 0).any())
    if cfg.threshold == "f1" and has_anomalies:
        _, threshold = best_f1_threshold(val.labels, scaled)
        normalization.threshold = float(threshold)
        normalization.method = "validation normal min-max; threshold = best F1 on validation"
    else:
        normalization.threshold = float(np.quantile(normalization(normal), cfg.threshold_quantile))
        normalization.method = f"validation normal min-max; threshold = {cfg.threshold_quantile:g} quantile of normal validation scores"
    return normalization


def selection_value(val: ScoredSet, metric: str) -> tuple[str, float]:
    """(metric used, value) for model selection; higher is better for both."""
    has_anomalies = bool((val.labels == 1).any() and (val.labels == 0).any())
    if metric == "auto":
        metric = "auroc" if has_anomalies else "loss"
    if metric == "auroc":
        return "val.auroc", detection_summary(val.labels, val.score)["auroc"]
    normal = val.score[val.labels <= 0]
    return "val.mean_normal_score", -float(np.mean(normal))


def split_metrics(scored: ScoredSet, normalization: ScoreNormalization) -> dict:
    """Metrics of one split on the deployment-scaled scores, at the stored threshold."""
    summary = detection_summary(scored.labels, normalization(scored.score), normalization.threshold)
    summary["mean_normal_raw_score"] = (
        float(np.mean(scored.score[scored.labels == 0])) if (scored.labels == 0).any() else float("nan")
    )
    return summary


def scoring_kwargs(config: Config, channels: int, device: torch.device, amp_dtype) -> dict:
    """The keyword arguments of :func:`score_set` that a run's configuration fixes."""
    return {
        "image_size": config.data.image_size,
        "channels": channels,
        "batch_size": config.data.eval_batch_size,
        "device": device,
        "score_lambda": config.eval.score_lambda,
        "amp_dtype": amp_dtype,
        "channels_last": config.train.channels_last,
        "workers": config.data.workers,
        "skip_bad": config.data.skip_bad_images,
    }


def score_set_sharded(model: nn.Module, image_set: ImageSet, context, **kwargs) -> ScoredSet:
    """:func:`score_set` with the images shared out over the processes of a torchrun job and the
    results gathered on every rank, in the set's order. Exact: in eval mode an image's score does
    not depend on the other images of its batch."""
    from . import distributed

    if context is None or not context.enabled:
        return score_set(model, image_set, **kwargs)
    mine = distributed.shard_indices(len(image_set), context)
    part = score_set(model, image_set.subset(mine), **kwargs)
    part.indices = mine[part.indices]
    parts = distributed.gather_objects(part, context)
    order = np.argsort(np.concatenate([p.indices for p in parts]), kind="stable")

    def joined(name):
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        return np.concatenate(values)[order]

    pixels = [p.pixel_errors for p in parts if p.pixel_errors is not None]
    return ScoredSet(
        score=joined("score"),
        reconstruction=joined("reconstruction"),
        latent=joined("latent"),
        labels=joined("labels"),
        indices=joined("indices"),
        anomaly_maps=joined("anomaly_maps"),
        reconstructed=joined("reconstructed"),
        features=joined("features"),
        pixel_errors=np.concatenate(pixels) if pixels else None,
        skipped=sum(p.skipped for p in parts),
    )


def score_splits(
    model, splits: Splits, config: Config, device, amp_dtype, details: bool = False, context=None
):
    """Score validation and test as the protocol says: eval mode, or (``paper``) the official
    code's train-mode BatchNorm over the set in the official order with the training batch size.

    ``context`` (a :class:`~skipganomaly.distributed.DistributedContext`) shares the eval-mode
    scoring out over the processes of a torchrun job; the ``paper`` protocol's train-mode scoring
    depends on batch composition, so there every process scores the whole set itself."""
    kwargs = scoring_kwargs(config, splits.channels, device, amp_dtype)
    if splits.protocol == "paper":
        kwargs.update(batchnorm_train=True, batch_size=config.data.batch_size)
        context = None
    test = score_set_sharded(model, splits.test, context, details=details, **kwargs)
    if splits.val is splits.test:
        return test, test
    return score_set_sharded(model, splits.val, context, pixel_sample=PIXEL_SAMPLE, **kwargs), test


def has_masks(image_set: ImageSet) -> bool:
    return image_set.masks is not None and any(m is not None for m in image_set.masks)


def pixel_metrics(
    model, image_set: ImageSet, config: Config, channels: int, device, amp_dtype, protocol: str
):
    """Pixel AUROC of the anomaly maps against ground-truth masks, or None without masks.

    Maps are compared at the model's resolution, masks resized to it (:func:`load_mask`). Normal
    images count with an all-normal mask; abnormal images without a mask file are left out (their
    pixels' labels are unknown). Scored as :func:`score_splits` scores (the ``paper`` protocol in
    BatchNorm training mode).
    """
    if not has_masks(image_set):
        return None
    kwargs = scoring_kwargs(config, channels, device, amp_dtype)
    if protocol == "paper":
        kwargs.update(batchnorm_train=True, batch_size=config.data.batch_size)
    scored = score_set(model, image_set, details=True, **kwargs)
    size = config.data.image_size
    maps, masks = [], []
    for k, i in enumerate(scored.indices):
        mask_file = image_set.masks[i]
        if mask_file is None:
            if image_set.labels is None or image_set.labels[i] != 0:
                continue
            masks.append(np.zeros((size, size), dtype=bool))
        else:
            masks.append(load_mask(mask_file, size))
        maps.append(scored.anomaly_maps[k].astype(np.float32))
    if not masks:
        return None
    return {"pixel_auroc": pixel_auroc(np.stack(masks), np.stack(maps)), "pixel_images": len(masks)}


def add_pixel_metrics(metrics: dict, model, splits: Splits, config: Config, device, amp_dtype) -> None:
    """Add ``pixel_auroc`` (and the number of images it covers) to ``metrics["val"]`` and
    ``metrics["test"]`` for the splits whose images have ground-truth masks."""
    args = (config, splits.channels, device, amp_dtype, splits.protocol)
    test = pixel_metrics(model, splits.test, *args)
    val = test if splits.val is splits.test else pixel_metrics(model, splits.val, *args)
    for name, result in (("val", val), ("test", test)):
        if result is not None:
            metrics[name].update(result)

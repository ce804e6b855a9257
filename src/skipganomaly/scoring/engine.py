"""The scoring engine: image sets in, per-image scores out (batches, sharding, pixel metrics).

What a run decides from the scores (normalisation, threshold, epoch selection) is in
:mod:`skipganomaly.scoring.decisions`; this module only scores, as :class:`ScoringOptions` say.

Honest scoring: networks in eval mode (BatchNorm running statistics), under ``inference_mode`` (or
``no_grad`` for a model whose ``score_needs_grad``), so an image's score does not depend on the
other images in its batch or on the order of the set. A protocol with ``official_scoring`` (the
``paper`` protocol) alone scores with BatchNorm in training mode, as the official code does; it
saves and restores the BatchNorm buffers so that scoring leaves the model unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import ImageSet, Splits
from ..data.images import DEFAULT_MAX_IMAGE_PIXELS, load_mask
from ..data.loading import BadImageCounter, Batch, iterate_batches, to_model_input
from ..models.objective import ScoreOutput
from ..models.patch_knn import bank_positions, patch_grid_size
from ..runtime.device import autocast
from ..specs.config import Config
from ..specs.protocols import PROTOCOL_SPECS
from .metrics import aupro, pixel_auroc

# Anomaly-map pixels kept per normal validation image, from which a run fixes its heatmap scale.
PIXEL_SAMPLE = 256


@dataclass(frozen=True)
class ScoringOptions:
    """How to score: input size and channels, batch size, device, lambda of Eq. 5, precision,
    memory format, data loading, BatchNorm mode, and whether to keep maps and features.

    :meth:`for_run` builds them from a run's configuration and protocol; ``replace`` changes one
    (``options.replace(batch_size=1)``)."""

    image_size: int
    channels: int
    batch_size: int
    device: torch.device
    score_lambda: float = 0.9
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    workers: int = 0
    skip_bad: bool = False
    batchnorm_train: bool = False  # the official code's train-mode BatchNorm (paper protocol)
    details: bool = False  # keep anomaly maps, reconstructions and features
    term_maps: bool = False  # with details, also the score terms' own maps (ScoredSet.term_maps)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger image files are bad images

    @classmethod
    def for_run(
        cls,
        config: Config,
        channels: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        protocol: str | None = None,
    ) -> ScoringOptions:
        """The options a run's configuration fixes. ``protocol`` adds what that protocol's
        scoring implies (the official code's: train-mode BatchNorm with the training batch size);
        without one, honest eval-mode scoring, as deployment scores."""
        options = cls(
            image_size=config.data.image_size,
            channels=channels,
            batch_size=config.data.eval_batch_size,
            device=device,
            score_lambda=config.eval.score_lambda,
            amp_dtype=amp_dtype,
            channels_last=config.train.channels_last,
            workers=config.data.workers,
            skip_bad=config.data.skip_bad_images,
            max_image_pixels=config.data.max_image_pixels,
        )
        if protocol is not None and PROTOCOL_SPECS[protocol].official_scoring:
            options = options.replace(batchnorm_train=True, batch_size=config.data.batch_size)
        return options

    def replace(self, **changes: Any) -> ScoringOptions:
        return dataclasses.replace(self, **changes)


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
    # The raw terms of a model that combines several (``ScoreOutput.terms``), by name.
    terms: dict[str, np.ndarray] | None = None
    # Each image's kind of anomaly where a set mixes several ("" for normal images): the synthetic
    # validation's families.
    groups: np.ndarray | None = None
    # R at each of the model's ``map_pooling`` candidates (N, C), when it has several.
    pooled_reconstruction: np.ndarray | None = None
    # With details, the per-pixel maps of the terms that make one (``ScoreOutput.maps``), float16.
    term_maps: dict[str, np.ndarray] | None = None


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


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def scored_batches(
    model: nn.Module,
    image_set: ImageSet,
    options: ScoringOptions,
    counter: BadImageCounter | None = None,
) -> Iterator[tuple[Batch, ScoreOutput]]:
    """Score ``image_set`` batch by batch, in its stored order: yields each batch with its
    :class:`ScoreOutput` moved to the CPU as float32, so a caller can stream results (``predict``
    writes them as they come) while memory stays bounded by one batch. ``counter`` counts the
    unreadable images skipped (``options.skip_bad``)."""
    o = options
    mode = batchnorm_train_mode(model) if o.batchnorm_train else _eval_mode(model)
    grad_mode = torch.no_grad if getattr(model, "score_needs_grad", False) else torch.inference_mode
    with mode:
        for batch in iterate_batches(
            image_set,
            o.batch_size,
            image_size=o.image_size,
            channels=o.channels,
            workers=o.workers,
            skip_bad=o.skip_bad,
            counter=counter,
            device=o.device,
            max_pixels=o.max_image_pixels,
        ):
            # Inference mode per batch, not around the yield: it is thread-local and would
            # otherwise stay on in the caller's code while this generator is suspended. A model
            # that searches at test time (AnoGAN) needs autograd: no_grad outside, and the model
            # enables gradients for its own search; every other model keeps inference_mode's speed.
            with grad_mode():
                x = to_model_input(batch.images, o.device, o.channels_last)
                with autocast(o.device, o.amp_dtype):
                    out = model.score(x, o.score_lambda, details=o.details)
                cpu = ScoreOutput(
                    **{
                        name: None if value is None else value.float().cpu()
                        for name, value in vars(out).items()
                        if name not in ("terms", "maps")
                    }
                )
                if out.terms is not None:
                    cpu.terms = {name: value.float().cpu() for name, value in out.terms.items()}
                if out.maps is not None and o.term_maps:  # only where asked (validation)
                    cpu.maps = {name: value.float().cpu() for name, value in out.maps.items()}
            yield batch, cpu


def score_set(
    model: nn.Module, image_set: ImageSet, options: ScoringOptions, pixel_sample: int = 0
) -> ScoredSet:
    """Score every image of ``image_set`` in its stored order (Eq. 5, raw, unscaled).

    ``options.details`` keeps anomaly maps, reconstructions and features. ``pixel_sample`` > 0
    keeps that many randomly drawn (seeded) anomaly-map pixels of each normal image, from which
    the run fixes the colour scale of its heatmaps without holding every map in memory.
    """
    details = options.details
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("score", "reconstruction", "latent", "labels", "indices")
    }
    extra: dict[str, list[np.ndarray]] = {"anomaly_maps": [], "reconstructed": [], "features": []}
    terms: dict[str, list[np.ndarray]] = {}
    counter = BadImageCounter()
    pixels: list[np.ndarray] = []
    pixel_rng = torch.Generator().manual_seed(0)
    batch_options = options.replace(details=details or pixel_sample > 0)
    for batch, out in scored_batches(model, image_set, batch_options, counter):
        parts["score"].append(out.score.numpy())
        parts["reconstruction"].append(out.reconstruction.numpy())
        parts["latent"].append(out.latent.numpy())
        parts["labels"].append(batch.labels.numpy())
        parts["indices"].append(batch.indices.numpy())
        for name, value in (out.terms or {}).items():
            terms.setdefault(name, []).append(value.numpy())
        if out.pooled_reconstruction is not None:
            extra.setdefault("pooled_reconstruction", []).append(out.pooled_reconstruction.numpy())
        if details:
            extra["anomaly_maps"].append(out.anomaly_map.numpy().astype(np.float16))
            extra["reconstructed"].append(out.reconstructed.numpy().astype(np.float16))
            extra["features"].append(out.features.numpy())
            for name, value in (out.maps or {}).items():
                extra.setdefault(f"map:{name}", []).append(value.numpy().astype(np.float16))
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
        terms={name: np.concatenate(values).astype(np.float64) for name, values in terms.items()} or None,
    )
    if extra.get("pooled_reconstruction"):
        scored.pooled_reconstruction = np.concatenate(extra["pooled_reconstruction"]).astype(np.float64)
    if details and parts["score"]:
        scored.anomaly_maps = np.concatenate(extra["anomaly_maps"])
        scored.reconstructed = np.concatenate(extra["reconstructed"])
        scored.features = np.concatenate(extra["features"])
        names = [key[4:] for key in extra if key.startswith("map:")]
        scored.term_maps = {name: np.concatenate(extra[f"map:{name}"]) for name in names} or None
    return scored


def score_set_sharded(
    model: nn.Module, image_set: ImageSet, options: ScoringOptions, context, pixel_sample: int = 0
) -> ScoredSet:
    """:func:`score_set` with the images shared out over the processes of a torchrun job and the
    results gathered on every rank, in the set's order. Exact: in eval mode an image's score does
    not depend on the other images of its batch."""
    from ..runtime import distributed

    if context is None or not context.enabled:
        return score_set(model, image_set, options, pixel_sample)
    mine = distributed.shard_indices(len(image_set), context)
    part = score_set(model, image_set.subset(mine), options, pixel_sample)
    part.indices = mine[part.indices]
    parts = distributed.gather_objects(part, context)
    order = np.argsort(np.concatenate([p.indices for p in parts]), kind="stable")

    def joined(name):
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        return np.concatenate(values)[order]

    pixels = [p.pixel_errors for p in parts if p.pixel_errors is not None]
    terms = None
    if all(p.terms is not None for p in parts):
        terms = {name: np.concatenate([p.terms[name] for p in parts])[order] for name in parts[0].terms}
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
        terms=terms,
        pooled_reconstruction=joined("pooled_reconstruction"),
    )


def _eval_batches(model: nn.Module, image_set: ImageSet, options: ScoringOptions, extract) -> Iterator:
    """``(batch, extract(x))`` for each batch of ``image_set``, in eval mode (the callers turn
    gradients off around the whole loop, not inside this generator, whose mode would leak)."""
    o = options
    with _eval_mode(model):
        for batch in iterate_batches(
            image_set, o.batch_size, image_size=o.image_size, channels=o.channels, device=o.device
        ):
            x = to_model_input(batch.images, o.device, o.channels_last)
            with autocast(o.device, o.amp_dtype):
                yield batch, extract(x).float()


@torch.no_grad()
def feature_bank(model: nn.Module, image_set: ImageSet, options: ScoringOptions) -> torch.Tensor:
    """f(x) of every image of ``image_set`` (eval mode; the model's ``features_of``), stacked:
    the normal training features the improved score's ``knn`` term compares with."""
    return torch.cat(
        [features for _, features in _eval_batches(model, image_set, options, model.features_of)]
    )


@torch.no_grad()
def patch_bank(model: nn.Module, image_set: ImageSet, options: ScoringOptions, seed: int) -> torch.Tensor:
    """Region features of the images of ``image_set`` (eval mode; the model's
    ``patch_features_of``), as many rows as the model's ``patch_bank``, at positions drawn among
    all of theirs from ``seed`` (:func:`~skipganomaly.models.patch_knn.bank_positions`): the
    normal regions the ``patch`` term compares with. Only the drawn rows are kept, batch by
    batch, so memory stays that of the bank whatever the images' number and size."""
    rows = model.patch_bank.shape[0]
    per_image = patch_grid_size(options.image_size) ** 2
    chosen = bank_positions(len(image_set) * per_image, rows, seed)
    image_of, position_of = chosen // per_image, chosen % per_image
    bank = torch.zeros(rows, model.patch_bank.shape[1], device=options.device)
    slot = torch.full((len(image_set),), -1, dtype=torch.long)
    for batch, features in _eval_batches(model, image_set, options, model.patch_features_of):
        slot.fill_(-1)
        slot[batch.indices] = torch.arange(len(batch.indices))
        hit = (slot[image_of] >= 0).nonzero().squeeze(1)
        flat = features.flatten(2)  # (B, C, h * w), positions row-major as bank_positions counts
        bank[hit] = flat[slot[image_of[hit]].to(flat.device), :, position_of[hit].to(flat.device)]
    return bank


def score_splits(
    model: nn.Module, splits: Splits, options: ScoringOptions, *, details: bool = False, context=None
) -> tuple[ScoredSet, ScoredSet]:
    """Validation and test scores, ``options`` being the protocol's (:meth:`ScoringOptions.for_run`
    with ``splits.protocol``); validation keeps a pixel sample for the heatmap scale.

    ``context`` (a :class:`~skipganomaly.runtime.distributed.DistributedContext`) shares the eval-mode
    scoring out over the processes of a torchrun job; train-mode BatchNorm scoring depends on
    batch composition, so there every process scores the whole set itself."""
    if options.batchnorm_train:
        context = None
    test = score_set_sharded(model, splits.test, options.replace(details=details), context)
    if splits.val is splits.test:
        return test, test
    return score_set_sharded(model, splits.val, options, context, pixel_sample=PIXEL_SAMPLE), test


def has_masks(image_set: ImageSet) -> bool:
    return image_set.masks is not None and any(m is not None for m in image_set.masks)


def pixel_masks(image_set: ImageSet, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images whose pixels' labels are known and their masks at ``size``: ``(indices, masks)``.
    Normal images count with an all-normal mask; abnormal images without a mask file are left
    out (their pixels' labels are unknown)."""
    keep, masks = [], []
    for i, mask_file in enumerate(image_set.masks or [None] * len(image_set)):
        if mask_file is None:
            if image_set.labels is None or image_set.labels[i] != 0:
                continue
            masks.append(np.zeros((size, size), dtype=bool))
        else:
            masks.append(load_mask(mask_file, size))
        keep.append(i)
    empty = np.zeros((0, size, size), dtype=bool)
    return np.asarray(keep, dtype=np.int64), (np.stack(masks) if masks else empty)


def mean_normal_map(model: nn.Module, image_set: ImageSet, options: ScoringOptions) -> np.ndarray | None:
    """The mean anomaly map of ``image_set``'s normal images (every image when it is unlabelled):
    where the map is high on every image, whatever the image shows. None without normal images."""
    normal = image_set
    if image_set.labels is not None:
        normal = image_set.subset(np.flatnonzero(image_set.labels == 0))
    if not len(normal):
        return None
    scored = score_set(model, normal, options.replace(details=True))
    return scored.anomaly_maps.astype(np.float32).mean(0) if len(scored.indices) else None


def pixel_metrics(
    model: nn.Module, image_set: ImageSet, options: ScoringOptions, location: np.ndarray | None = None
) -> dict[str, Any] | None:
    """Pixel AUROC of the anomaly maps against ground-truth masks, or None without masks.

    Maps are compared at the model's resolution, masks resized to it (:func:`load_mask`), on the
    images :func:`pixel_masks` keeps. Scored as ``options`` say (the protocol's, as its splits are).

    ``location`` (:func:`mean_normal_map` of other images) adds the location control: the pixel
    AUROC of that one map given to every image. Where defects sit where the map is always high
    (the middle of a part, its lit side), the control alone scores as well as the maps, and the
    pixel AUROC then says where defects usually are, not where this image's is.
    """
    if not has_masks(image_set):
        return None
    keep, masks = pixel_masks(image_set, options.image_size)
    # The whole set is scored, as its image scores are (train-mode BatchNorm sees whole batches).
    scored = score_set(model, image_set, options.replace(details=True))
    row_of = {int(i): k for k, i in enumerate(scored.indices)}
    rows = [k for k, i in enumerate(keep) if int(i) in row_of]
    if not rows:
        return None
    masks = masks[rows]
    maps = scored.anomaly_maps[[row_of[int(keep[k])] for k in rows]].astype(np.float32)
    result = {
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps),
        "pixel_images": len(masks),
    }
    if location is not None:
        control = pixel_auroc(masks, np.broadcast_to(location, masks.shape))
        result |= {"location_control": control, "pixel_margin": result["pixel_auroc"] - control}
    return result


def split_pixel_metrics(model: nn.Module, splits: Splits, options: ScoringOptions) -> dict[str, dict]:
    """``{"val": ..., "test": ...}`` pixel metrics of the splits whose images have masks; test's
    with the location control of the validation split's normal images (none where validation is
    the test set: the paper protocol)."""
    location = None
    if splits.val is not splits.test and has_masks(splits.test):
        location = mean_normal_map(model, splits.val, options)
    test = pixel_metrics(model, splits.test, options, location)
    val = test if splits.val is splits.test else pixel_metrics(model, splits.val, options)
    return {name: result for name, result in (("val", val), ("test", test)) if result is not None}

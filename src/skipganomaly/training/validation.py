"""Each epoch's validation: the scoring weights scored on validation and test, after what the
improved score fits first (the feature bank of normal training images, the standardisation of the
score's terms and which of them count); the epoch's record in the history and its log line.

What is decided from the scores (normalisation, threshold, epoch selection, the terms' subset) is
:mod:`skipganomaly.scoring.decisions`; this module applies it to a run, every epoch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import ImageSet, Splits
from ..data.synthetic import SyntheticAnomalies, normal_images, run_synthetic_anomalies
from ..runtime import distributed
from ..runtime.distributed import DistributedContext
from ..runtime.threads import ThreadChooser
from ..scoring.decisions import (
    MAP_SOURCES,
    choose_map,
    choose_pooling,
    choose_terms,
    fit_term_statistics,
    group_aurocs,
    map_key_text,
    selection_text,
    standardize_terms,
    synthetic_scored_set,
    uses_synthetic_validation,
    with_pooling,
)
from ..scoring.engine import (
    ScoredSet,
    ScoringOptions,
    feature_bank,
    has_masks,
    patch_bank,
    pixel_masks,
    score_set,
    score_splits,
)
from ..scoring.metrics import auroc, pixel_auroc
from ..specs.config import Config


def has_map_choice(model: nn.Module) -> bool:
    """Whether validation has a map to choose: a segmentation head's besides the reconstruction
    error, several smoothings (``model.map_smoothing``), or a baseline to fill
    (``model.map_baseline``)."""
    smoothings = getattr(model, "map_smoothing_candidates", (0.0,))
    baselines = getattr(model, "map_baseline_candidates", ("none",))
    others = getattr(model, "segmentation", None) is not None or hasattr(model, "patch_map_on")
    return others or len(smoothings) > 1 or "mean" in baselines


def set_map_source(model: nn.Module, source: str) -> None:
    """Make the model's anomaly map the one of ``source`` (one of :data:`MAP_SOURCES`)."""
    if getattr(model, "segmentation", None) is not None:  # the two maps it mixes; for the patch
        weights = [float(source == name) for name in MAP_SOURCES[:2]]  # map, |x - G(x)| under it
        model.set_map_weights(torch.tensor(weights if any(weights) else [1.0, 0.0]))
    if hasattr(model, "patch_map_on"):
        model.set_patch_map(source == "patch")


def map_sources(model: nn.Module) -> list[str]:
    """The anomaly maps ``model`` can give, of :data:`MAP_SOURCES`."""
    has = {"reconstruction": True, "segmentation": getattr(model, "segmentation", None) is not None}
    has["patch"] = hasattr(model, "patch_map_on")
    return [name for name in MAP_SOURCES if has[name]]


def raw_source_maps(
    model: nn.Module, image_set: ImageSet, options: ScoringOptions
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Every map source's maps of ``image_set`` (:func:`map_sources`), unsmoothed and with no
    baseline subtracted, from one pass (|x - G(x)| as the anomaly map, the others as the terms'
    maps), and the indices they are aligned with. Leaves the model's map as |x - G(x)|, raw."""
    if getattr(model, "map_radius", 0):
        model.set_map_smoothing(0.0)
    if "mean" in getattr(model, "map_baseline_candidates", ()):
        model.set_map_baseline(None)
    set_map_source(model, "reconstruction")
    scored = score_set(model, image_set, options.replace(details=True, term_maps=True, batchnorm_train=False))
    found = {"reconstruction": scored.anomaly_maps, **(scored.term_maps or {})}
    return {
        source: torch.from_numpy(found[source].astype(np.float32)) for source in map_sources(model)
    }, scored.indices


class Validation:
    """Scores a run's scoring weights on its validation and test splits, as its protocol says.

    ``bank_images``: the normal training images whose features a feature bank of the score holds
    (a score term's ``feature_bank``; :mod:`skipganomaly.specs.score_terms`), drawn once per run
    from the seed, or None when the model keeps no bank."""

    def __init__(
        self,
        config: Config,
        splits: Splits,
        device: torch.device,
        context: DistributedContext,
        thread_chooser: ThreadChooser,
        model: nn.Module,
    ):
        self.config = config
        self.splits = splits
        self.device = device
        self.context = context
        self.thread_chooser = thread_chooser
        self._model = model
        self.bank_images = None
        bank = getattr(model, "feature_bank", None)
        if bank is not None or hasattr(model, "patch_bank"):
            count = len(bank) if bank is not None else min(len(splits.train), config.model.knn_bank)
            pick = np.random.default_rng(config.train.seed).choice(len(splits.train), count, replace=False)
            self.bank_images = splits.train.subset(np.sort(pick))
        # The synthetic validation (data/synthetic.py): made on first use, scored every epoch.
        self.uses_synthetic = uses_synthetic_validation(config.eval, splits.val.labels, model)
        self.synthetic: SyntheticAnomalies | None = None
        self.synthetic_scores: ScoredSet | None = None  # this epoch's: normal val + synthetic
        self.synthetic_record: dict[str, Any] | None = None
        self.last_val: ScoredSet | None = None
        self.map_record: dict[str, Any] | None = None  # the map chosen on labelled masks
        self.pooling_record: dict[str, Any] | None = None  # R's pooling, when there are candidates

    def _synthetic_anomalies(self, options: ScoringOptions) -> ScoredSet:
        """This epoch's scores of the synthetic anomalies; where the model has maps to choose
        among, first choose its map on their masks (:meth:`choose_map_on`)."""
        if self.synthetic is None:
            self.synthetic = run_synthetic_anomalies(self.config, self.splits)
        model = self._model
        self.synthetic_record = {"families": list(self.synthetic.families)}
        if has_map_choice(model):
            local = self.synthetic.map_choosers(self.config.eval.synthetic_map_blobs)
            self.synthetic_record |= self.choose_map_on(
                model, self.synthetic.images.subset(local), self.synthetic.masks[local], options
            )
        scored = score_set(model, self.synthetic.images, options.replace(batchnorm_train=False))
        self.synthetic_record["images"] = len(scored.score)
        return scored

    def choose_map_on(
        self, model: nn.Module, images: ImageSet, masks: np.ndarray, options: ScoringOptions
    ) -> dict[str, Any]:
        """Choose the run's anomaly map (the reconstruction error, the segmentation head's, the patch
        distances'; :data:`~skipganomaly.scoring.decisions.MAP_SOURCES`), its
        smoothing (``model.map_smoothing``) and whether it is measured against the normal
        validation images' mean map (``model.map_baseline``), on the pixel AUROC of ``masks``
        (aligned with ``images``); set the model's buffers and return what was measured."""
        sources = map_sources(model)
        baselines = getattr(model, "map_baseline_candidates", ("none",))
        raw, indices = raw_source_maps(model, images, options)
        normal_raw = (
            raw_source_maps(model, normal_images(self.splits.val), options)[0] if "mean" in baselines else {}
        )
        masks = masks[indices]
        pixel_aurocs, mean_maps = {}, {}
        for source in sources:
            for smoothing in model.map_smoothing_candidates:
                maps = model.smooth_map(raw[source], smoothing)
                for baseline in baselines:
                    key = (source, smoothing) if baselines == ("none",) else (source, smoothing, baseline)
                    if baseline == "mean":
                        # Where every normal image's map is high (edges, a lit band) says nothing
                        # of this image; the mean map of the normal validation images is that.
                        mean_maps[key] = model.smooth_map(normal_raw[source], smoothing).mean(0)
                        pixel_aurocs[key] = pixel_auroc(masks, (maps - mean_maps[key]).numpy())
                    else:
                        pixel_aurocs[key] = pixel_auroc(masks, maps.numpy())
        source, smoothing, baseline = choose_map(pixel_aurocs)
        set_map_source(model, source)
        if model.map_radius:
            model.set_map_smoothing(smoothing)
        if baseline == "mean":
            model.set_map_baseline(mean_maps[(source, smoothing, "mean")])
        return {
            "pixel_auroc": {map_key_text(key): value for key, value in pixel_aurocs.items()},
            "map": source,
            "map_smoothing": smoothing,
            "map_baseline": baseline,
        }

    def _labelled_map_choice(self, model: nn.Module, options: ScoringOptions) -> dict[str, Any] | None:
        """Under a protocol whose validation holds anomalies with ground-truth masks, choose the
        map on them (normal images count with an all-normal mask; anomalies without a mask file
        are left out, as :func:`~skipganomaly.scoring.engine.pixel_metrics` does)."""
        val = self.splits.val
        if not has_map_choice(model) or not has_masks(val) or val.labels is None:
            return None
        keep, masks = pixel_masks(val, self.config.data.image_size)
        if not masks.any():
            return None
        return self.choose_map_on(model, val.subset(keep), masks, options)

    def score(
        self, model: nn.Module, amp_dtype: torch.dtype | None, calibrate: bool = False
    ) -> tuple[ScoredSet, ScoredSet, list[str] | None]:
        """Validation and test scores of ``model`` (sharded over the processes), and the score
        terms that count (None unless calibrated and the model sums terms).

        ``calibrate``: first fit what the improved score keeps besides weights, on this epoch's
        weights: the feature bank (normal training images) and then the standardisation of the
        score terms (normal validation images); the scores returned are the model's scores with
        them."""
        if self.context.enabled:
            distributed.average_buffers(model)  # one model on every rank, and in the checkpoint
        if self.device.type == "cpu":
            self.thread_chooser.apply()
        options = ScoringOptions.for_run(
            self.config, self.splits.channels, self.device, amp_dtype, self.splits.protocol
        )
        if calibrate and hasattr(model, "feature_bank"):
            model.set_feature_bank(
                feature_bank(model, self.bank_images, options.replace(batchnorm_train=False))
            )
        if calibrate and hasattr(model, "patch_bank"):
            rows = patch_bank(
                model, self.bank_images, options.replace(batchnorm_train=False), self.config.train.seed
            )
            model.set_patch_bank(rows)
        anomalies = None
        if calibrate and self.uses_synthetic:
            self._model = model
            anomalies = self._synthetic_anomalies(options)
        self.map_record = None
        if calibrate and not self.uses_synthetic:
            self.map_record = self._labelled_map_choice(model, options)
        val, test = score_splits(model, self.splits, options, context=self.context)
        synthetic = None
        if anomalies is not None:
            synthetic = synthetic_scored_set(val, anomalies, self.synthetic.family_of(anomalies.indices))
        # Which terms count: chosen on labelled validation; under the synthetic validation every
        # term counts unless eval.synthetic_choose_terms (it favours the terms that see local
        # damage, measured in docs/normal-only.md).
        choose = getattr(model, "select_terms", False) and (
            synthetic is None or self.config.eval.synthetic_choose_terms
        )
        self.pooling_record = None
        if calibrate and val.terms is not None and val.pooled_reconstruction is not None:
            val, test, synthetic = self._choose_pooling(model, val, test, synthetic, choose)
        self.synthetic_scores, self.last_val = synthetic, val
        if not (calibrate and val.terms is not None):
            self._record_synthetic(synthetic)
            return val, test, None
        mean, std = fit_term_statistics(val)
        weights = (
            choose_terms(val if synthetic is None else synthetic, mean, std) if choose else np.ones(len(mean))
        )
        model.set_term_statistics(
            torch.from_numpy(mean).float(),
            torch.from_numpy(std).float(),
            torch.from_numpy(weights).float(),
        )
        sets = [val, test] + ([synthetic] if synthetic is not None else [])
        for scored in {id(s): s for s in sets}.values():
            scored.score = standardize_terms(scored, mean, std, weights)
        self._record_synthetic(synthetic)
        return val, test, [name for name, w in zip(val.terms, weights, strict=True) if w]

    def _choose_pooling(
        self, model: nn.Module, val: ScoredSet, test: ScoredSet, synthetic: ScoredSet | None, choose: bool
    ) -> tuple[ScoredSet, ScoredSet, ScoredSet | None]:
        """Choose R's pooling among ``model.map_pooling``'s candidates on the figure the epoch is
        chosen on (the synthetic validation's worst family, else labelled validation AUROC), set
        the model's buffer, and return the sets with R at the choice."""
        index, figures = choose_pooling(val if synthetic is None else synthetic, val, choose)
        fraction = model.map_pooling_candidates[index]
        model.set_map_pooling(fraction)
        self.pooling_record = {
            "map_pooling": fraction,
            "on": "labelled validation" if synthetic is None else "synthetic validation",
            "figures": {f"{c:g}": f for c, f in zip(model.map_pooling_candidates, figures, strict=True)},
        }
        chosen = [None if s is None else with_pooling(s, index) for s in (val, test, synthetic)]
        return chosen[0], chosen[1], chosen[2]

    def _record_synthetic(self, synthetic: ScoredSet | None) -> None:
        if synthetic is None:
            self.synthetic_record = None
            return
        found = group_aurocs(synthetic.labels, synthetic.score, synthetic.groups)
        by_family = {name: found[name] for name in self.synthetic.families if name in found}
        # What the epoch is chosen on: the worst family's AUROC (scoring.decisions.worst_group_auroc).
        self.synthetic_record |= {"auroc": min(by_family.values()), "by_family": by_family}


def epoch_record(
    epoch: int,
    lr: float,
    losses: dict[str, float],
    val: ScoredSet,
    test: ScoredSet,
    selection: tuple[str, float],
    seconds: float,
    paper: dict[str, Any] | None = None,
    score_terms: list[str] | None = None,
    synthetic: dict[str, Any] | None = None,
    map_choice: dict[str, Any] | None = None,
    pooling_choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One epoch's entry of the run's history (``metrics.json`` and the checkpoints keep it)."""
    normal = val.labels == 0
    record = {
        "epoch": epoch,
        "lr": lr,
        "losses": losses,
        "val": {
            "auroc": auroc(val.labels, val.score),
            "mean_normal_score": float(np.mean(val.score[normal])) if normal.any() else math.nan,
        },
        "test": {"auroc": auroc(test.labels, test.score)},
        "selection": {"metric": selection[0], "value": selection[1]},
        "seconds": seconds,
    }
    if paper is not None:
        record["paper"] = paper
    if score_terms is not None:
        record["score_terms"] = score_terms
    if synthetic is not None:
        record["synthetic_val"] = dict(synthetic)
    if map_choice is not None:  # chosen on labelled validation masks
        record["map_choice"] = dict(map_choice)
    if pooling_choice is not None:  # R's pooling, among model.map_pooling's candidates
        record["pooling_choice"] = dict(pooling_choice)
    return record


def epoch_line(record: dict[str, Any], epochs: int, best: bool) -> str:
    """The line an epoch prints: its losses, the validation figure the epoch is chosen on, test
    AUROC, the paper protocol's AUROC and the score's terms when scored, seconds, and whether it
    is the best epoch so far."""
    losses = record["losses"]
    # The generator's terms are model-specific (g_con, g_lat, g_enc, ...): show those present.
    terms = " ".join(f"{k[2:]} {v:.4f}" for k, v in losses.items() if k.startswith("g_"))
    # The metric the epoch is chosen on; normal-only has no validation AUROC (no anomalies).
    selection_name, value = record["selection"]["metric"], record["selection"]["value"]
    val_text = selection_text(selection_name, value)
    if selection_name != "val.auroc" and not math.isnan(record["val"]["auroc"]):
        val_text += f"  val AUROC {record['val']['auroc']:.4f}"
    choice = record.get("map_choice") or record.get("synthetic_val") or {}
    if "map" in choice:
        smoothing = choice.get("map_smoothing", 0.0)
        val_text += f"  map {choice['map']}" + (f" smoothed {smoothing:g}" if smoothing else "")
        val_text += "  less the normal mean" if choice.get("map_baseline") == "mean" else ""
    if "pooling_choice" in record:
        fraction = record["pooling_choice"]["map_pooling"]
        val_text += "  R mean" if fraction == 1 else f"  R top {100 * fraction:g}%"
    return (
        f"epoch {record['epoch']:>3}/{epochs}  g {losses['g']:.4f} ({terms})  d {losses['d']:.4f}  "
        f"{val_text}  test AUROC {record['test']['auroc']:.4f}"
        + (f"  paper-protocol AUROC {record['paper']['auroc']:.4f}" if "paper" in record else "")
        + (f"  score {'+'.join(record['score_terms'])}" if "score_terms" in record else "")
        + f"  {record['seconds']:.1f}s"
        + ("  *best*" if best else "")
    )

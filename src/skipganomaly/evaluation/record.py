"""What an evaluation records: ``metrics.json`` (built from sections), ``scores.csv``, and
:func:`evaluate_run`, the one "evaluate a checkpoint" that ``skipganomaly test`` and the trainer's
last step share.

``metrics.json`` is the contract other tools read (``protocol``, ``epoch_best``, ``val.auroc``,
``test.auroc`` at least; docs/architecture.md lists every key). It is assembled by
:func:`build_metrics` from :data:`METRIC_SECTIONS`: functions that each read the
:class:`EvaluationInputs` and return the keys they add. A new section (say, the AUROC of trivial
image statistics as a shortcut warning, or a per-anomaly-type table) is one function appended to
that tuple; its dict is merged into the metrics (a dict under an existing key such as ``val`` or
``test`` is merged into it).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..data.base import Splits, anomaly_types
from ..formats.checkpoint import Checkpoint, Selection
from ..runtime.files import write_text
from ..scoring import controls, shortcuts
from ..scoring.decisions import selection_report, split_metrics
from ..scoring.engine import ScoredSet, ScoringOptions, has_masks, score_splits, split_pixel_metrics
from ..scoring.metrics import auroc, auroc_by_type, curve_spread, false_positive_rate
from ..scoring.normalization import ScoreNormalization
from ..specs.config import Config
from ..specs.protocols import BEST_TEST_EPOCH_NOTE, PROTOCOL_SPECS
from .paper import summarize_paper_protocol


@dataclass
class EvaluationInputs:
    """What every ``metrics.json`` section may read: the run's configuration and splits, the
    validation and test scores of the kept weights, the stored normalisation and selection, the
    per-epoch history, and (for sections that score again) the kept model and the protocol's
    scoring options."""

    config: Config
    splits: Splits
    val: ScoredSet
    test: ScoredSet
    normalization: ScoreNormalization
    best: Selection
    history: list[dict[str, Any]]
    model: Callable[[], nn.Module]  # the kept weights, built on first call
    options: ScoringOptions


Section = Callable[[EvaluationInputs], dict[str, Any]]

# Steadiness is the spread of the per-epoch AUROC over this many last epochs (issue 10's target:
# a standard deviation of validation AUROC <= 0.03 over the last 5 epochs).
STEADY_EPOCHS = 5


def run_section(e: EvaluationInputs) -> dict[str, Any]:
    """What was evaluated: the protocol and its note, the model, the data and the training."""
    info = e.splits.info
    return {
        "protocol": e.splits.protocol,
        "protocol_note": PROTOCOL_SPECS[e.splits.protocol].note,
        "model": e.config.model.name,
        "dataset": info.dataset or e.config.data.dataset,
        "setting": info.setting,
        "normal_classes": info.normal_classes,
        "abnormal_classes": info.abnormal_classes,
        "counts": e.splits.counts(),
        "seed": e.config.train.seed,
        "preset": e.config.train.preset,
        "epochs": e.config.train.epochs,
    }


def selection_section(e: EvaluationInputs) -> dict[str, Any]:
    """The epoch kept and the validation metric that chose it; ``selected_on`` gives that metric's
    value on its own scale (normal-only: the mean score of the held-out normal images, lower is
    better) and its title, so a protocol without a validation AUROC still shows what it chose on."""
    return {
        "epoch_best": e.best.epoch,
        "selection": e.best.metric,
        "selected_on": selection_report(e.best.metric, e.best.value),
    }


def detection_section(e: EvaluationInputs) -> dict[str, Any]:
    """Validation and test metrics on the deployment-scaled scores, at the stored threshold."""
    return {
        "val": split_metrics(e.val, e.normalization),
        "test": split_metrics(e.test, e.normalization),
    }


def _pairs(e: EvaluationInputs) -> list[tuple[str, ScoredSet]]:
    return [("val", e.val), ("test", e.test)]


def false_positive_section(e: EvaluationInputs) -> dict[str, Any]:
    """``fpr`` into ``val`` and ``test``: the share of their normal images flagged at the stored
    threshold; and ``fpr_target`` where that threshold is a quantile of normal validation scores
    (normal-only, ``eval.threshold=quantile``), which promises 1 - ``eval.threshold_quantile``.
    It shows whether the threshold, fixed on held-out training normals, holds on test normals."""
    threshold = e.normalization.threshold
    out: dict[str, Any] = {
        name: {"fpr": false_positive_rate(scored.labels, e.normalization(scored.score), threshold)}
        for name, scored in _pairs(e)
    }
    target = None
    if "target false-positive rate" in e.normalization.method:  # eval.threshold=fpr
        target = e.config.eval.target_fpr
    elif "quantile" in e.normalization.method:  # a quantile of normal scores promises its complement
        target = 1.0 - e.config.eval.threshold_quantile
    if target is not None:
        for entry in out.values():
            entry["fpr_target"] = target
    return out


def anomaly_types_section(e: EvaluationInputs) -> dict[str, Any]:
    """The paper's Table II layout: ``by_type`` into ``val`` and ``test`` when their abnormal
    images come in several named kinds (MVTec's defect folders, a folder set's ``test/<type>/``,
    the reference layout's abnormal sub-folders, a one-class setting's other classes): per kind,
    the AUROC of the split's normal images against that kind alone, its count and the share
    flagged at the stored threshold. The overall figure is the split's ``auroc``."""
    out: dict[str, Any] = {}
    for name, scored in _pairs(e):
        kinds = anomaly_types(getattr(e.splits, name), e.splits.info.class_names)
        if kinds is None:
            continue
        types = [kinds[i] for i in scored.indices]
        scaled = e.normalization(scored.score)
        out[name] = {"by_type": auroc_by_type(scored.labels, scaled, types, e.normalization.threshold)}
    return out


def shortcuts_section(e: EvaluationInputs) -> dict[str, Any]:
    """``shortcuts``: the AUROC of trivial image statistics (mean, spread, gradient; original
    size and aspect for files) on the validation and test splits, beside the model's, overall and
    per anomaly kind, and the warnings they raise (:mod:`skipganomaly.scoring.shortcuts`). A split
    without both normal and abnormal images (normal-only's validation) has none."""
    data = e.config.data
    out: dict[str, Any] = {
        "note": shortcuts.NOTE,
        "warn_at": {
            "separability": shortcuts.WARN_SEPARABILITY,
            "margin": shortcuts.WARN_MARGIN,
            "compare_from": shortcuts.COMPARE_FROM,
        },
    }
    done: dict[int, dict[str, Any]] = {}
    warnings: list[str] = []
    for name, scored in reversed(_pairs(e)):  # test first: it is the figure reported
        image_set = getattr(e.splits, name)
        labels = image_set.labels
        if labels is None or not ((labels == 0).any() and (labels == 1).any()):
            out[name] = None
            continue
        if id(image_set) in done:  # the paper protocol validates on the test set itself
            out[name] = done[id(image_set)]
            continue
        positions, statistics, unavailable = shortcuts.set_statistics(
            image_set,
            data.image_size,
            e.splits.channels,
            workers=data.workers,
            skip_bad=data.skip_bad_images,
        )
        kinds = anomaly_types(image_set, e.splits.info.class_names)
        model_by_type = None
        if kinds is not None:
            by_type = auroc_by_type(scored.labels, scored.score, [kinds[i] for i in scored.indices])
            model_by_type = {kind: entry["auroc"] for kind, entry in by_type.items()}
        entry = shortcuts.summarize_split(
            labels[positions],
            statistics,
            auroc(scored.labels, scored.score),
            name,
            types=[kinds[i] for i in positions] if kinds is not None else None,
            model_by_type=model_by_type,
            unavailable=unavailable,
        )
        warnings += entry["warnings"]
        done[id(image_set)] = out[name] = entry
    out["warnings"] = warnings
    return {"shortcuts": out}


def controls_section(e: EvaluationInputs) -> dict[str, Any]:
    """``controls``: the AUROC of learned controls on the test split (the pixel kNN of
    :mod:`skipganomaly.scoring.controls`), a floor the model must clear."""
    labels = e.splits.test.labels
    if labels is None or not ((labels == 0).any() and (labels == 1).any()):
        return {"controls": None}
    data = e.config.data
    positions, scores = controls.pixel_knn_scores(
        e.splits.train, e.splits.test, image_size=data.image_size, channels=e.splits.channels,
        seed=e.config.train.seed, skip_bad=data.skip_bad_images,
    )  # fmt: skip
    return {
        "controls": {
            "note": controls.NOTE,
            "test": {"pixel_knn": {"auroc": auroc(labels[positions], scores), "k": controls.CONTROL_K}},
        }
    }


def derived_margins(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """``margins.test``: the model's test AUROC minus the best trivial statistic's separability
    (``shortcuts``) and minus the pixel kNN's AUROC (``controls``); negative where the model does
    worse. None when test has no anomalies."""
    model = (metrics.get("test") or {}).get("auroc")
    if model is None or model != model:
        return None
    out: dict[str, Any] = {}
    statistics = ((metrics.get("shortcuts") or {}).get("test") or {}).get("statistics") or {}
    if statistics:
        name = max(statistics, key=lambda k: statistics[k]["separability"])
        out["best_statistic"] = name
        out["over_best_statistic"] = model - statistics[name]["separability"]
    knn = (((metrics.get("controls") or {}).get("test") or {}).get("pixel_knn") or {}).get("auroc")
    if knn is not None:
        out["over_pixel_knn"] = model - knn
    return {"test": out} if out else None


def _curve_value(record: dict[str, Any], split: str) -> float | None:
    return (record.get(split) or {}).get("auroc")


def steadiness_section(e: EvaluationInputs) -> dict[str, Any]:
    """``steadiness``: the spread of the per-epoch validation AUROC over the last
    :data:`STEADY_EPOCHS` epochs (population standard deviation and range), and of the test AUROC
    (reported, never used to choose; the one AUROC curve of a normal-only run)."""
    return {
        "steadiness": {
            "last_epochs": STEADY_EPOCHS,
            "note": f"population standard deviation (ddof = 0) and range (max - min) of the AUROC after "
            f"each of the last {STEADY_EPOCHS} epochs (fewer when the run had fewer)",
            "val_auroc": curve_spread([_curve_value(h, "val") for h in e.history], STEADY_EPOCHS),
            "test_auroc": curve_spread([_curve_value(h, "test") for h in e.history], STEADY_EPOCHS),
        }
    }


def optimistic_section(e: EvaluationInputs) -> dict[str, Any]:
    """The two optimistic figures, each named so: ``paper_style``, the best test AUROC of the
    run's own test split over its epochs; ``paper_protocol``, the paper protocol's evaluation at
    its best epoch when it was scored every epoch (``eval.paper_each_epoch``), else None."""
    test_aurocs = [h["test"]["auroc"] for h in e.history]
    finite = [i for i, v in enumerate(test_aurocs) if not math.isnan(v)]
    paper_style = None
    if finite:
        i = max(finite, key=lambda j: test_aurocs[j])
        paper_style = {
            "test_auroc": test_aurocs[i],
            "epoch": e.history[i]["epoch"],
            "note": BEST_TEST_EPOCH_NOTE,
        }
    return {"paper_style": paper_style, "paper_protocol": summarize_paper_protocol(e.history)}


def normalization_section(e: EvaluationInputs) -> dict[str, Any]:
    """The deployment normalisation and threshold (fixed on validation) and the epoch history."""
    return {"normalization": e.normalization.to_dict(), "history": e.history}


def pixel_section(e: EvaluationInputs) -> dict[str, Any]:
    """``pixel_auroc``, ``aupro`` and ``pixel_images`` into ``val`` and ``test`` when their images
    have ground-truth masks (MVTec AD), scored with the kept weights as the protocol scores; test's
    with its location control (``location_control``, ``pixel_margin``)."""
    if not (has_masks(e.splits.val) or has_masks(e.splits.test)):
        return {}
    return split_pixel_metrics(e.model(), e.splits, e.options)


METRIC_SECTIONS: tuple[Section, ...] = (
    run_section,
    selection_section,
    detection_section,
    false_positive_section,
    anomaly_types_section,
    optimistic_section,
    steadiness_section,
    shortcuts_section,
    controls_section,
    normalization_section,
    pixel_section,
)


def build_metrics(
    inputs: EvaluationInputs, sections: tuple[Section, ...] = METRIC_SECTIONS
) -> dict[str, Any]:
    """The ``metrics.json`` contract: every section's keys, in section order."""
    metrics: dict[str, Any] = {}
    for section in sections:
        for key, value in section(inputs).items():
            if isinstance(value, dict) and isinstance(metrics.get(key), dict):
                metrics[key].update(value)
            else:
                metrics[key] = value
        if section is controls_section:  # derived from the figures so far, placed after them
            metrics["margins"] = derived_margins(metrics)
    return metrics


@dataclass
class Evaluation:
    """What :func:`evaluate_run` returns: the metrics and the scores they come from."""

    metrics: dict[str, Any]
    val: ScoredSet
    test: ScoredSet
    normalization: ScoreNormalization


def evaluate_run(
    checkpoint: Checkpoint,
    splits: Splits,
    config: Config,
    device,
    amp_dtype,
    *,
    scores: tuple[ScoredSet, ScoredSet] | None = None,
    history: list[dict[str, Any]] | None = None,
    model: nn.Module | None = None,
    context=None,
) -> Evaluation:
    """Evaluate the weights of ``checkpoint`` on ``splits`` as the protocol says.

    Validation and test are scored (sharded over ``context``'s processes) unless ``scores``
    already holds them (the trainer scored them when it kept the epoch); the normalisation and
    the selection are the checkpoint's; ``history`` defaults to the checkpoint's. ``model``, the
    checkpoint's weights, is built when first needed unless given."""
    options = ScoringOptions.for_run(config, splits.channels, device, amp_dtype, splits.protocol)
    built: list[nn.Module] = [] if model is None else [model]

    def kept_model() -> nn.Module:
        if not built:
            built.append(checkpoint.build_model().to(device))
        return built[0]

    if scores is None:
        scores = score_splits(kept_model(), splits, options, context=context)
    val, test = scores
    inputs = EvaluationInputs(
        config=config,
        splits=splits,
        val=val,
        test=test,
        normalization=checkpoint.normalization,
        best=checkpoint.best,
        history=checkpoint.history if history is None else history,
        model=kept_model,
        options=options,
    )
    return Evaluation(build_metrics(inputs), val, test, checkpoint.normalization)


def write_scores_csv(
    path: Path, splits: Splits, scored: dict[str, ScoredSet], normalization: ScoreNormalization
) -> None:
    """Per-image scores of validation and test (for reports, histograms, ROC curves)."""
    names = list(splits.info.class_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["split", "index", "label", "class", "score", "raw_score", "reconstruction", "latent", "path"]
    )
    seen = set()
    for split_name, result in scored.items():
        if id(result) in seen:  # the paper protocol validates on the test set itself
            continue
        seen.add(id(result))
        image_set = getattr(splits, split_name)
        scaled = normalization(result.score)
        for k, i in enumerate(result.indices):
            class_id = int(image_set.class_ids[i])
            if image_set.groups is not None:
                class_name = image_set.groups[i]
            else:
                class_name = names[class_id] if 0 <= class_id < len(names) else str(class_id)
            writer.writerow(
                [
                    split_name,
                    int(i),
                    int(result.labels[k]),
                    class_name,
                    f"{scaled[k]:.6g}",
                    f"{result.score[k]:.6g}",
                    f"{result.reconstruction[k]:.6g}",
                    f"{result.latent[k]:.6g}",
                    image_set.paths[i] if image_set.paths is not None else "",
                ]
            )
    write_text(path, buffer.getvalue())

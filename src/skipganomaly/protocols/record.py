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

from ..checkpoint import Checkpoint, Selection
from ..config import Config
from ..data.base import Splits
from ..decisions import split_metrics
from ..files import write_text
from ..objective import ScoreNormalization
from ..scoring import ScoredSet, ScoringOptions, has_masks, score_splits, split_pixel_metrics
from . import BEST_TEST_EPOCH_NOTE, PROTOCOL_SPECS
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
    """The epoch kept and the validation metric that chose it."""
    return {"epoch_best": e.best.epoch, "selection": e.best.metric}


def detection_section(e: EvaluationInputs) -> dict[str, Any]:
    """Validation and test metrics on the deployment-scaled scores, at the stored threshold."""
    return {
        "val": split_metrics(e.val, e.normalization),
        "test": split_metrics(e.test, e.normalization),
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
    """``pixel_auroc`` and ``pixel_images`` into ``val`` and ``test`` when their images have
    ground-truth masks (MVTec AD), scored with the kept weights as the protocol scores."""
    if not (has_masks(e.splits.val) or has_masks(e.splits.test)):
        return {}
    return split_pixel_metrics(e.model(), e.splits, e.options)


METRIC_SECTIONS: tuple[Section, ...] = (
    run_section,
    selection_section,
    detection_section,
    optimistic_section,
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

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from skipganomaly.scoring.metrics import (
    auprc,
    auroc,
    best_f1_threshold,
    detection_summary,
    equal_error_rate,
    pixel_auroc,
    precision_recall_f1,
)


def test_auroc_hand_computed():
    # Pairs (abnormal, normal): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok -> 3 of 4.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    assert math.isnan(auroc([0, 0], [0.1, 0.2]))


def test_against_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_precision_recall_f1_at_threshold():
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.7, 0.9]
    out = precision_recall_f1(labels, scores, 0.5)  # flagged: 0.6 (fp), 0.7, 0.9 (tp)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)


def test_best_f1_threshold():
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.7, 0.9]
    f1, threshold = best_f1_threshold(labels, scores)
    # Flagging everything >= 0.4 gives tp 3, fp 1: F1 = 6/7, the best cut.
    assert f1 == pytest.approx(6 / 7)
    assert 0.1 < threshold <= 0.4
    assert precision_recall_f1(labels, scores, threshold)["f1"] == pytest.approx(6 / 7)


def test_best_f1_handles_ties():
    f1, threshold = best_f1_threshold([0, 1, 1], [0.5, 0.5, 0.9])
    assert precision_recall_f1([0, 1, 1], [0.5, 0.5, 0.9], threshold)["f1"] == pytest.approx(f1)


def test_equal_error_rate():
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.0)
    assert equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1.0)
    # One normal above one abnormal of two each: FPR = FNR = 0.5 at the crossing.
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]) == pytest.approx(0.5)


def test_pixel_auroc():
    masks = np.array([[[0, 255], [0, 0]]])
    maps = np.array([[[0.1, 0.9], [0.2, 0.3]]])
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)


def test_detection_summary_fields():
    out = detection_summary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.3)
    assert out["auroc"] == pytest.approx(0.75)
    assert out["n"] == 4 and out["n_abnormal"] == 2
    assert out["recall"] == pytest.approx(1.0) and out["precision"] == pytest.approx(2 / 3)

"""The evaluation's checks, against hand-computed values: shortcut statistics and their warnings,
AUROC per anomaly type (Table II), the false-positive rate at the threshold, steadiness, and the
selection metric as a person reads it."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from skipganomaly.data.base import ImageSet, SplitInfo, Splits, anomaly_types
from skipganomaly.data.folders import anomaly_group
from skipganomaly.evaluation.record import (
    EvaluationInputs,
    anomaly_types_section,
    build_metrics,
    false_positive_section,
    selection_section,
    shortcuts_section,
    steadiness_section,
)
from skipganomaly.formats.checkpoint import Selection
from skipganomaly.scoring import shortcuts
from skipganomaly.scoring.decisions import selection_report, selection_text
from skipganomaly.scoring.engine import ScoredSet
from skipganomaly.scoring.metrics import auroc_by_type, curve_spread, false_positive_rate
from skipganomaly.scoring.normalization import ScoreNormalization
from skipganomaly.specs.config import build_config


def flat_images(levels, size=4, channels=1) -> np.ndarray:
    return np.stack([np.full((size, size, channels), v, np.uint8) for v in levels])


# --------------------------------------------------------------------------- image statistics
def test_image_statistics_by_hand():
    ramp = np.array([[0, 30], [0, 30]], np.uint8)  # dx = 30, dy = 0 on the 1x1 forward grid
    checker = np.array([[0, 40], [40, 0]], np.uint8)  # dx = 40, dy = 40 -> sqrt(3200)
    flat = np.full((2, 2), 10, np.uint8)
    images = np.stack([ramp, checker, flat])[..., None]
    stats = shortcuts.image_statistics(images)
    assert stats["mean"].tolist() == [15.0, 20.0, 10.0]
    assert stats["std"].tolist() == [15.0, 20.0, 0.0]
    assert stats["gradient"] == pytest.approx([30.0, math.sqrt(3200.0), 0.0])


def test_colour_images_use_every_channel_for_mean_and_spread_and_the_channel_mean_for_gradients():
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[0, :, :, 0] = 30  # red plane 30, the others 0: mean 10, the channel mean is flat
    stats = shortcuts.image_statistics(image)
    assert stats["mean"][0] == pytest.approx(10.0)
    assert stats["std"][0] == pytest.approx(math.sqrt(200.0))  # values 30 (1/3), 0 (2/3)
    assert stats["gradient"][0] == 0.0


def test_size_statistics():
    stats = shortcuts.size_statistics(np.array([[20, 10], [30, 30]]))
    assert stats["size"].tolist() == [200.0, 900.0]
    assert stats["aspect"].tolist() == [2.0, 1.0]


# --------------------------------------------------------------------------- AUROC, direction, warnings
def test_four_image_brightness_auroc_by_hand():
    # Normals 10, 30; anomalies 20, 40: of the 4 (abnormal, normal) pairs, 3 have the anomaly
    # brighter (20>10, 40>10, 40>30) -> AUROC 3/4.
    labels = np.array([0, 0, 1, 1])
    stats = shortcuts.image_statistics(flat_images([10, 30, 20, 40]))
    table = shortcuts.statistic_aurocs(labels, stats)
    assert table["mean"] == {"auroc": 0.75, "separability": 0.75, "direction": "higher in abnormal"}
    assert "std" not in table and "gradient" not in table  # flat images: both constant
    assert shortcuts.constant_statistics(stats) == {"std": 0.0, "gradient": 0.0}
    # Darker anomalies (5, 25): 1 pair of 4 has the anomaly brighter -> 0.25, separability 0.75.
    darker = shortcuts.statistic_aurocs(labels, shortcuts.image_statistics(flat_images([10, 30, 5, 25])))
    assert darker["mean"] == {"auroc": 0.25, "separability": 0.75, "direction": "lower in abnormal"}


def test_separability_of_the_lead_measured_figures():
    # CIFAR-10 automobile (test split): mean 0.441, std 0.648, gradient 0.732; digits 1: gradient 0.037.
    assert shortcuts.separability(0.441) == (pytest.approx(0.559), "lower in abnormal")
    assert shortcuts.separability(0.732) == (0.732, "higher in abnormal")
    assert shortcuts.separability(0.037) == (pytest.approx(0.963), "lower in abnormal")
    assert shortcuts.separability(0.5) == (0.5, "none")
    assert math.isnan(shortcuts.separability(math.nan)[0])


def _table(**aurocs):
    out = {}
    for name, value in aurocs.items():
        sep, direction = shortcuts.separability(value)
        out[name] = {"auroc": value, "separability": sep, "direction": direction}
    return out


def test_warnings_fire_on_strong_statistics_and_on_those_as_good_as_the_model():
    # digits 1: std 0.889 alone does not reach 0.9, gradient 0.037 (separability 0.963) does.
    digits = shortcuts.shortcut_warnings("test", _table(std=0.889, gradient=0.037), model_auroc=0.99)
    assert len(digits) == 1 and "mean gradient" in digits[0] and "0.963 >= 0.9" in digits[0]
    assert "lower in abnormal" in digits[0]
    # automobile, a model at 0.739: gradient 0.732 is within 0.05; std 0.648 is not; mean 0.441
    # (separability 0.559) is below the 0.6 from which statistics are compared with the model.
    car = shortcuts.shortcut_warnings("test", _table(mean=0.441, std=0.648, gradient=0.732), 0.739)
    assert len(car) == 1 and "mean gradient" in car[0] and "within 0.05" in car[0]
    # truck, a model at 0.70: std 0.726 and gradient 0.722 both beat it.
    truck = shortcuts.shortcut_warnings("test", _table(mean=0.543, std=0.726, gradient=0.722), 0.70)
    assert [w.split(" alone")[0] for w in truck] == ["test: intensity std", "test: mean gradient"]
    assert all("better than the model's 0.700" in w for w in truck)
    # frog, a model at 0.60: mean 0.346 (separability 0.654) beats it in the other direction.
    frog = shortcuts.shortcut_warnings("test", _table(mean=0.346, std=0.361, gradient=0.586), 0.60)
    assert len(frog) == 2 and "lower in abnormal" in frog[0]
    # A good model far above every statistic: no warning.
    assert shortcuts.shortcut_warnings("test", _table(mean=0.441, std=0.648, gradient=0.732), 0.95) == []
    # A model at chance: statistics that separate nothing are not reported as shortcuts.
    assert shortcuts.shortcut_warnings("test", _table(mean=0.52, std=0.45), 0.50) == []
    # No model AUROC (normal-only validation): only the absolute rule.
    assert len(shortcuts.shortcut_warnings("val", _table(mean=0.95, std=0.7), math.nan)) == 1


def test_per_type_statistics_and_warnings():
    labels = np.array([0, 0, 1, 1, 1, 1])
    types = ["good", "good", "dark", "dark", "bright", "bright"]
    stats = shortcuts.image_statistics(flat_images([100, 110, 10, 20, 105, 200]))
    by_type = shortcuts.by_type_aurocs(labels, stats, types)
    assert by_type["dark"]["mean"]["auroc"] == 0.0  # both darker than both normals
    assert by_type["bright"]["mean"]["auroc"] == 0.75  # 105 > 100, 105 < 110, 200 > both
    entry = shortcuts.summarize_split(
        labels, stats, 0.9, "test", types=types, model_by_type={"dark": 0.8, "bright": 0.95}
    )
    assert entry["statistics"]["mean"]["auroc"] == pytest.approx(0.375)  # 3 of 8 pairs
    assert entry["warnings"] == [
        "test, normal vs dark: mean intensity alone (AUROC 0.000, lower in abnormal) separates at 1.000 >= 0.9"
    ]


def test_the_warning_block_is_one_loud_block():
    block = shortcuts.warning_block(["test: mean intensity alone ..."])
    lines = block.splitlines()
    assert lines[0] == lines[-1] == "!" * 78
    assert "SHORTCUT WARNING" in lines[1] and "test: mean intensity alone ..." in block


# --------------------------------------------------------------------------- sets of images
def _write(path, width, height, level):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), level, np.uint8)).save(path)
    return str(path)


def test_file_backed_sets_stream_their_statistics_with_the_files_own_sizes(tmp_path):
    # Normals 20x20 (aspect 1); anomalies 30x20 and 40x20: wider and larger, AUROC 1 for both.
    specs = [(20, 20, 100, 0), (20, 20, 120, 0), (30, 20, 90, 1), (40, 20, 130, 1)]
    paths = [_write(tmp_path / f"{i}.png", w, h, v) for i, (w, h, v, _) in enumerate(specs)]
    labels = np.array([s[3] for s in specs])
    streamed = ImageSet(class_ids=labels, paths=paths, labels=labels)
    positions, stats, unavailable = shortcuts.set_statistics(streamed, 8, 1, batch_size=3)
    assert positions.tolist() == [0, 1, 2, 3] and unavailable == {}
    assert stats["mean"].tolist() == [100.0, 120.0, 90.0, 130.0]
    assert stats["size"].tolist() == [400.0, 400.0, 600.0, 800.0]
    table = shortcuts.statistic_aurocs(labels, stats)
    assert table["size"]["auroc"] == 1.0 and table["aspect"]["auroc"] == 1.0
    assert table["mean"]["auroc"] == 0.5  # 90 < both, 130 > both
    # The same files decoded into memory: sizes come from the file headers.
    in_memory = ImageSet(
        class_ids=labels, images=flat_images([100, 120, 90, 130], size=8), paths=paths, labels=labels
    )
    _, stats_memory, _ = shortcuts.set_statistics(in_memory, 8, 1)
    assert stats_memory["size"].tolist() == stats["size"].tolist()
    # Images without files: no size, and the reason is recorded.
    arrays = ImageSet(class_ids=labels, images=flat_images([100, 120, 90, 130], size=8), labels=labels)
    _, stats_arrays, unavailable = shortcuts.set_statistics(arrays, 8, 1)
    assert "size" not in stats_arrays and "one native size" in unavailable["size"]


# --------------------------------------------------------------------------- Table II, FPR, steadiness
def test_auroc_by_type_by_hand():
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.4, 0.3, 0.9, 0.5]
    types = ["good", "good", "crack", "hole", "hole"]
    table = auroc_by_type(labels, scores, types, threshold=0.45)
    # crack 0.3 against normals 0.1 (above) and 0.4 (below): 1/2; hole 0.9 and 0.5 above both: 1.
    assert table == {
        "crack": {"auroc": 0.5, "n_abnormal": 1, "recall": 0.0},
        "hole": {"auroc": 1.0, "n_abnormal": 2, "recall": 1.0},
    }
    assert list(auroc_by_type(labels, scores, types)["crack"]) == ["auroc", "n_abnormal"]


def test_false_positive_rate_by_hand():
    assert false_positive_rate([0, 0, 0, 0, 1], [0.1, 0.5, 0.6, 0.2, 0.9], 0.5) == 0.5
    assert math.isnan(false_positive_rate([1, 1], [0.1, 0.2], 0.5))


def test_curve_spread_over_the_last_epochs():
    spread = curve_spread([0.5, math.nan, 0.6, 0.7, 0.8, 0.9, 1.0], last=5)
    assert spread["values"] == [0.6, 0.7, 0.8, 0.9, 1.0]
    assert spread["std"] == pytest.approx(math.sqrt(0.02)) and spread["range"] == pytest.approx(0.4)
    assert curve_spread([0.7, 0.8], last=5) == {
        "std": pytest.approx(0.05),
        "range": pytest.approx(0.1),
        "epochs": 2,
        "values": [0.7, 0.8],
    }
    assert curve_spread([math.nan, math.nan]) is None


def test_anomaly_types_come_from_groups_or_class_names():
    labels = np.array([0, 1, 1, 1])
    grouped = ImageSet(
        class_ids=[0, 1, 2, 2],
        images=flat_images([1, 2, 3, 4]),
        labels=labels,
        groups=["good", "crack", "hole", "hole"],
    )
    assert anomaly_types(grouped, ["good", "crack", "hole"]) == ["good", "crack", "hole", "hole"]
    by_class = ImageSet(class_ids=[0, 1, 2, 2], images=flat_images([1, 2, 3, 4]), labels=labels)
    assert anomaly_types(by_class, ["cat", "dog", "frog"]) == ["cat", "dog", "frog", "frog"]
    one_kind = ImageSet(class_ids=[0, 1, 1, 1], images=flat_images([1, 2, 3, 4]), labels=labels)
    assert anomaly_types(one_kind, ["cat", "dog"]) is None  # one kind: its AUROC is the overall one
    # The reference layout: an abnormal folder's sub-folder names the kind.
    assert anomaly_group("1.abnormal", "test/1.abnormal/knife/001.png") == "knife"
    assert anomaly_group("1.abnormal", "test/1.abnormal/001.png") == "1.abnormal"


def test_selection_metric_as_a_person_reads_it():
    assert selection_report("val.mean_normal_score", -0.125) == {
        "metric": "val.mean_normal_score",
        "title": "mean anomaly score of the held-out normal images",
        "value": 0.125,
        "better": "lower",
    }
    assert selection_report("val.auroc", 0.8)["better"] == "higher"
    assert (
        selection_text("val.mean_normal_score", -0.125)
        == "val normal score 0.1250 (selects; lower is better)"
    )
    assert selection_text("val.auroc", 0.8) == "val AUROC 0.8000"


# --------------------------------------------------------------------------- the metrics.json sections
def _inputs(protocol="val-split") -> EvaluationInputs:
    """A split whose anomalies are brighter (a brightness shortcut) and of two kinds, with
    hand-made scores."""
    levels = [100, 110, 120, 130, 200, 210, 140, 150]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = ["good"] * 4 + ["bright", "bright", "grey", "grey"]
    test = ImageSet(
        class_ids=np.zeros(8, np.int64), images=flat_images(levels, size=16), labels=labels, groups=groups
    )
    val = test.subset(np.arange(8))
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.9, 0.15, 0.8])

    def scored(image_set):
        return ScoredSet(
            score=scores.copy(),
            reconstruction=scores.copy(),
            latent=np.zeros(8),
            labels=image_set.labels.copy(),
            indices=np.arange(8),
        )

    history = [
        {"epoch": e, "val": {"auroc": a}, "test": {"auroc": t}}
        for e, (a, t) in enumerate(
            [(0.6, 0.5), (0.7, 0.6), (0.8, 0.7), (0.7, 0.7), (0.8, 0.8), (0.9, 0.8)], 1
        )
    ]
    info = SplitInfo(dataset="synthetic", class_names=["good"], setting="own split")
    splits = Splits(train=test, val=val, test=test, protocol=protocol, channels=1, info=info)
    return EvaluationInputs(
        config=build_config({"data.image_size": 16}),
        splits=splits,
        val=scored(val),
        test=scored(test),
        normalization=ScoreNormalization(low=0.0, high=1.0, threshold=0.5),
        best=Selection(epoch=6, metric="val.auroc", value=0.9),
        history=history,
        model=lambda: None,
        options=None,
    )


def test_the_new_sections_by_hand():
    e = _inputs()
    # Test scores: normals 0.1..0.4; bright 0.35, 0.9; grey 0.15, 0.8. Bright against the normals:
    # 0.35 beats 3 of 4, 0.9 all 4 -> 7/8; grey: 0.15 beats 1, 0.8 all 4 -> 5/8. Overall 12/16.
    by_type = anomaly_types_section(e)["test"]["by_type"]
    assert by_type["bright"] == {"auroc": 0.875, "n_abnormal": 2, "recall": 0.5}
    assert by_type["grey"] == {"auroc": 0.625, "n_abnormal": 2, "recall": 0.5}
    assert false_positive_section(e)["test"] == {"fpr": 0.0}
    section = shortcuts_section(e)["shortcuts"]
    test = section["test"]
    # Brightness: normals 100..130, anomalies 200, 210, 140, 150 are all brighter: AUROC 1.
    assert test["statistics"]["mean"]["auroc"] == 1.0 and test["model_auroc"] == pytest.approx(0.75)
    assert test["by_type"]["grey"]["mean"]["auroc"] == 1.0
    assert "unavailable" in test and "size" in test["unavailable"]
    assert any("mean intensity alone (AUROC 1.000, higher in abnormal)" in w for w in section["warnings"])
    steadiness = steadiness_section(e)["steadiness"]
    assert steadiness["val_auroc"]["values"] == [0.7, 0.8, 0.7, 0.8, 0.9]
    assert steadiness["val_auroc"]["std"] == pytest.approx(np.std([0.7, 0.8, 0.7, 0.8, 0.9]))
    assert steadiness["val_auroc"]["range"] == pytest.approx(0.2)
    assert selection_section(e)["selected_on"]["value"] == 0.9
    metrics = build_metrics(e, (anomaly_types_section, false_positive_section, shortcuts_section))
    assert set(metrics["test"]) == {"by_type", "fpr"}
    json.dumps(metrics, allow_nan=True)  # metrics.json holds it as it is


def test_normal_only_validation_has_no_shortcut_entry_and_no_types():
    e = _inputs("normal-only")
    normals = e.splits.test.subset(np.arange(4))
    e.splits.val = normals
    e.val = ScoredSet(
        score=np.array([0.1, 0.2, 0.3, 0.4]),
        reconstruction=np.zeros(4),
        latent=np.zeros(4),
        labels=np.zeros(4, np.int64),
        indices=np.arange(4),
    )
    section = shortcuts_section(e)["shortcuts"]
    assert section["val"] is None and section["test"]["statistics"]["mean"]["auroc"] == 1.0
    assert "val" not in anomaly_types_section(e)
    # Held-out normals 0.1..0.4 at threshold 0.35: one of four flagged.
    e.normalization.threshold = 0.35
    assert false_positive_section(e)["val"] == {"fpr": 0.25}
    e.normalization.method = (
        "validation normal min-max; threshold = 0.95 quantile of normal validation scores"
    )
    assert false_positive_section(e)["test"] == {"fpr": 0.25, "fpr_target": pytest.approx(0.05)}

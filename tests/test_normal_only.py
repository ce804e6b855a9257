"""The normal-only detector: synthetic anomalies, restoration, the segmentation head, the
synthetic validation, the false-positive-rate threshold, AUPRO and the learned controls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_splits, tiny_config, train_killed_then_resumed

from skipganomaly.data.base import ImageSet
from skipganomaly.data.corruptions import CORRUPTION_FUNCTIONS, WARP_VISIBLE, corrupt, smooth_blobs
from skipganomaly.data.synthetic import synthetic_anomalies
from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.objective import LossWeights, focal_loss
from skipganomaly.scoring.controls import pixel_knn_scores
from skipganomaly.scoring.decisions import choose_map, fit_normalization, selection_value
from skipganomaly.scoring.engine import ScoredSet
from skipganomaly.scoring.metrics import aupro
from skipganomaly.specs.config import build_config
from skipganomaly.specs.corruptions import CORRUPTIONS, parse_corruptions
from skipganomaly.specs.errors import UserError
from skipganomaly.training.trainer import Trainer

LOCAL = ("blend", "cutpaste", "intensity", "stain", "chimera", "warp")
RESTORING = {
    "train.preset": "restoring",
    "train.ema_decay": 0.9,
    "model.knn_bank": 32,
    "eval.synthetic_images": 16,
}


def images(n=8, size=16, channels=3, seed=0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: structure for every family to damage."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 2 - 1


# ------------------------------------------------------------------ the families
@pytest.mark.parametrize("family", CORRUPTIONS)
def test_each_family_damages_its_mask_and_only_its_mask(family):
    x = images()
    damaged, mask = CORRUPTION_FUNCTIONS[family](x, torch.Generator().manual_seed(1))
    assert damaged.shape == x.shape and mask.shape == (8, 1, 16, 16)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert damaged.min() >= -1 and damaged.max() <= 1
    # A warp moves pixels by a flow that fades out, so it changes faintly beyond its mask: only a
    # visible change counts for it.
    changed = (damaged - x).abs().amax(1, keepdim=True) > (WARP_VISIBLE if family == "warp" else 1e-6)
    covered = mask.flatten(1).mean(1)
    assert (covered > 0).all(), f"{family}: an empty mask {covered.tolist()}"
    if family in LOCAL:
        assert (covered < 0.7).all(), f"{family}: masks should be local, got {covered.tolist()}"
        # Nothing changes outside the mask, and inside it the image did change.
        assert not (changed & (mask == 0)).any(), family
        assert (changed & (mask == 1)).flatten(1).any(1).all(), family
    else:  # shuffle: a layout anomaly, the whole image
        assert (covered == 1).all()
        assert changed.flatten(1).any(1).all()


def test_a_chimera_is_one_side_of_another_image():
    x = images(n=6)
    damaged, mask = CORRUPTION_FUNCTIONS["chimera"](x, torch.Generator().manual_seed(2))
    other = x.roll(3, dims=0)  # half the batch away
    inside = mask.expand_as(x) == 1
    assert torch.equal(damaged[inside], other[inside]) and torch.equal(damaged[~inside], x[~inside])
    for m in mask[:, 0]:  # a straight cut: every row (or every column) is all in or all out
        rows_whole = ((m == 1).all(1) | (m == 0).all(1)).all()
        columns_whole = ((m == 1).all(0) | (m == 0).all(0)).all()
        assert rows_whole or columns_whole


def test_blobs_cover_the_drawn_share_and_are_reproducible():
    x = images(n=16, size=32)
    a = smooth_blobs(x, torch.Generator().manual_seed(3))
    b = smooth_blobs(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    coverage = a.flatten(1).mean(1)
    assert ((coverage >= 0.015) & (coverage <= 0.25)).all(), coverage.tolist()


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1)


def test_blobs_at_image_scale_are_a_share_of_the_image_at_every_size():
    """At blob_scale=image a blob keeps a 32 px image's scale above it: the same draw at 128 px is
    the 32 px mask drawn finer. At the default (pixels) the 128 px mask is specks: another draw."""
    g = torch.Generator
    small = smooth_blobs(images(n=8, size=32), g().manual_seed(4)) > 0
    assert torch.equal(small, smooth_blobs(images(n=8, size=32), g().manual_seed(4), scale="image") > 0)
    large = smooth_blobs(images(n=8, size=128), g().manual_seed(4), scale="image")
    overlap = _iou(torch.nn.functional.avg_pool2d(large, 4) > 0.5, small)
    assert (overlap > 0.6).all(), f"intersection over union of the 128 px and 32 px masks {overlap.tolist()}"
    specks = smooth_blobs(images(n=8, size=128), g().manual_seed(4))
    apart = _iou(torch.nn.functional.avg_pool2d(specks, 4) > 0.5, small)
    assert (apart < 0.4).all(), f"pixels scale should not be the 32 px draw enlarged: {apart.tolist()}"


def _edge_per_area(masks: torch.Tensor) -> torch.Tensor:
    """A mask's boundary length over its area: high for specks, low for regions."""
    across = (masks[..., 1:] - masks[..., :-1]).abs().flatten(1).sum(1)
    down = (masks[..., 1:, :] - masks[..., :-1, :]).abs().flatten(1).sum(1)
    return (across + down) / masks.flatten(1).sum(1)


def test_blobs_at_both_scales_are_specks_and_regions_half_each():
    """blob_scale=both: of each size of noise cell, images 0 of every 4 (finer) and 1 (coarser)
    are specks at 128 px as at the default, images 2 and 3 regions as at blob_scale=image."""

    def edges(scale: str) -> torch.Tensor:
        return _edge_per_area(
            smooth_blobs(images(n=32, size=128), torch.Generator().manual_seed(7), scale=scale)
        )

    both = edges("both")
    for finer_or_coarser in (0, 1):
        specks, regions = both[finer_or_coarser::4], both[2 + finer_or_coarser :: 4]
        assert specks.min() > 1.5 * regions.max(), (
            f"edge per area: specks {specks.tolist()}, regions {regions.tolist()}"
        )
    pixels, image = edges("pixels"), edges("image")
    assert pixels[0::4].min() > 1.5 * image[2::4].max(), (pixels.tolist(), image.tolist())


def test_a_warp_moves_the_image_and_keeps_its_colours():
    x = images(n=8, size=64, seed=5)
    damaged, mask = CORRUPTION_FUNCTIONS["warp"](x, torch.Generator().manual_seed(6), "image")
    assert mask.flatten(1).amax(1).all(), "every image of smooth structure gets a visible bend"
    # Bilinear resampling of the image's own pixels: no value outside what the image holds.
    assert (damaged.amin((2, 3)) >= x.amin((2, 3)) - 1e-5).all()
    assert (damaged.amax((2, 3)) <= x.amax((2, 3)) + 1e-5).all()
    flat = torch.full((2, 3, 64, 64), 0.3)
    still, nothing = CORRUPTION_FUNCTIONS["warp"](flat, torch.Generator().manual_seed(6), "image")
    assert torch.allclose(still, flat, atol=1e-6) and not nothing.any(), "a bent flat image is unchanged"


def test_corrupt_touches_the_asked_share_and_leaves_x_alone():
    x = images(n=64)
    before = x.clone()
    torch.manual_seed(0)
    out, mask = corrupt(x, ("blend", "cutpaste", "intensity"), fraction=0.5)
    assert torch.equal(x, before)
    damaged = mask.flatten(1).amax(1) > 0
    assert 20 <= int(damaged.sum()) <= 44, int(damaged.sum())
    assert torch.equal(out[~damaged], x[~damaged])
    clean, nothing = corrupt(x, ("stain",), fraction=1e-9)
    assert torch.equal(clean, x) and not nothing.any()


def test_families_are_one_registry_and_names_are_checked():
    assert tuple(CORRUPTION_FUNCTIONS) == CORRUPTIONS
    assert parse_corruptions("blend, stain") == ("blend", "stain")
    with pytest.raises(UserError, match="'mud' is unknown"):
        parse_corruptions("mud")
    with pytest.raises(UserError, match="twice"):
        parse_corruptions("blend,blend")


@pytest.mark.parametrize(
    "values, said",
    [
        ({"train.corruptions": "blend,stain"}, "also in train.corruptions"),
        ({"model.segmentation_head": True, "model.score_terms": "segmentation"}, "set train.corruptions"),
        ({"model.score_terms": "segmentation"}, "needs model.segmentation_head"),
        ({"train.corruptions": "blend", "train.corruption_fraction": 0.0}, "corruption_fraction"),
        ({"eval.target_fpr": 1.5}, "eval.target_fpr"),
        ({"eval.synthetic_family": ""}, "synthetic_family is empty"),
        ({"train.blob_scale": "huge"}, "train.blob_scale='huge'"),
        ({"eval.synthetic_map_blobs": "most"}, "eval.synthetic_map_blobs='most'"),
        ({"eval.synthetic_map_blobs": "regions"}, "needs blobs that are regions"),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(values, said):
    with pytest.raises(UserError, match=said):
        build_config({"train.preset": "improved", **values})


# ------------------------------------------------------------------ the model
def test_restoration_compares_the_restored_corrupted_image_with_the_clean_one():
    torch.manual_seed(0)
    model = SkipGANomaly(16, 3, 8, 8, 16, segmentation_head=True)
    x = images(n=4)
    corrupted = corrupt(x, ("blend",), fraction=1.0, generator=torch.Generator().manual_seed(2))
    losses = model.training_losses(x, LossWeights(), corrupted=corrupted)
    with torch.no_grad():
        expected = (x - model.generator(corrupted[0])).abs().mean()  # ||x - G(x~)||_1, train mode
    assert torch.allclose(losses.parts["g_con"], expected, atol=1e-6), (losses.parts["g_con"], expected)
    assert "g_seg" in losses.parts and losses.parts["g_seg"] > 0


def test_every_parameter_of_the_restoring_model_gets_a_gradient():
    torch.manual_seed(0)
    model = SkipGANomaly(16, 3, 8, 8, 16, rotation_head=True, segmentation_head=True)
    x = images(n=6)
    corrupted = corrupt(x, ("blend", "cutpaste"), fraction=1.0, generator=torch.Generator().manual_seed(2))
    losses = model.training_losses(x, LossWeights(rotation=1.0), corrupted=corrupted)
    groups = model.parameter_groups()
    losses.generator.backward(inputs=groups["generator"], retain_graph=True)
    losses.discriminator.backward(inputs=groups["discriminator"])
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(name.startswith("segmentation.") for name, _ in model.named_parameters())


def test_a_model_without_the_head_is_the_model_it_was():
    torch.manual_seed(0)
    plain = SkipGANomaly(16, 1, 8, 8, 16)
    torch.manual_seed(0)
    with_head = SkipGANomaly(16, 1, 8, 8, 16, segmentation_head=True)
    assert "segmentation_head" not in plain.args  # checkpoints of faithful models unchanged
    for name, value in plain.state_dict().items():
        assert torch.equal(value, with_head.state_dict()[name]), name
    assert not any(k.startswith("segmentation") or k == "map_weights" for k in plain.state_dict())


def test_the_segmentation_term_and_map_follow_the_head():
    torch.manual_seed(0)
    model = SkipGANomaly(
        16, 3, 8, 8, 16, segmentation_head=True, score_terms="reconstruction,segmentation"
    ).eval()
    x = images(n=3)
    out = model.score(x, details=True)
    with torch.no_grad():
        probabilities = torch.sigmoid(model.segmentation(x, out.reconstructed))
        smoothed = torch.nn.functional.avg_pool2d(probabilities, 3, 1, 1, count_include_pad=False)
    assert torch.allclose(out.terms["segmentation"], smoothed.flatten(1).amax(1), atol=1e-6)
    reconstruction_map = (x - out.reconstructed).abs().mean(1)
    assert torch.allclose(out.anomaly_map, reconstruction_map, atol=1e-6)  # until validation chooses
    model.set_map_weights(torch.tensor([0.0, 1.0]))
    assert torch.allclose(model.score(x, details=True).anomaly_map, probabilities[:, 0], atol=1e-6)


def test_focal_loss_against_a_hand_computed_value():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    # pixel by pixel: -(1 - p_t)^2 log p_t
    p_true = torch.tensor([[p[0, 0], 1 - p[0, 1]], [1 - p[1, 0], p[1, 1]]])
    expected = (-((1 - p_true) ** 2) * torch.log(p_true)).mean()
    assert torch.allclose(focal_loss(logits, target), expected, atol=1e-6)


# ------------------------------------------------------------------ decisions and metrics
def scored(scores, labels) -> ScoredSet:
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    return ScoredSet(scores, scores, scores, labels, np.arange(len(labels)))


def test_the_fpr_threshold_holds_its_rate_whatever_the_share_of_anomalies():
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 400)
    config = build_config({"eval.threshold": "fpr", "eval.target_fpr": 0.1})
    few = fit_normalization(
        scored(np.r_[normal, rng.normal(3, 1, 20)], np.r_[np.zeros(400), np.ones(20)]), config.eval
    )
    many = fit_normalization(
        scored(np.r_[normal, rng.normal(3, 1, 2000)], np.r_[np.zeros(400), np.ones(2000)]), config.eval
    )
    assert few.threshold == many.threshold
    flagged = np.mean(few(normal) >= few.threshold)
    assert abs(flagged - 0.1) <= 0.01, flagged
    assert "target false-positive rate 0.1" in few.method


def test_selection_on_the_synthetic_validation_and_the_map_choice():
    val = scored([0.1, 0.2, 0.3], [0, 0, 0])
    synthetic = scored([0.1, 0.2, 0.3, 0.25, 0.9], [0, 0, 0, 1, 1])
    assert selection_value(val, "auto", synthetic=synthetic) == ("synthetic_val.auroc", pytest.approx(5 / 6))
    assert selection_value(val, "auto")[0] == "val.mean_normal_score"  # the faithful rule stays
    assert choose_map({"reconstruction": 0.6, "segmentation": 0.9})[0] == "segmentation"
    assert choose_map({"reconstruction": 0.7, "segmentation": 0.7}) == ("reconstruction", 0.0, "none")


def test_aupro_against_hand_computed_curves():
    masks = np.zeros((2, 8, 8))
    masks[0, 1:3, 1:3] = 1
    masks[0, 5:7, 5:7] = 1
    assert aupro(masks, masks.copy()) == pytest.approx(1.0)
    # One region found, the other scored like the normal pixels: PRO 0.5 until a threshold
    # flags the normal pixels too; interpolated to 0.65 at FPR 0.3, area 0.575 of 1.
    half = np.zeros_like(masks)
    half[0, 1:3, 1:3] = 1
    assert aupro(masks, half) == pytest.approx(0.575)
    # A map of noise: PRO equals the FPR, so the normalised area is about 0.15.
    noise = np.random.default_rng(1).random((8, 64, 64))
    big = np.zeros_like(noise)
    big[:, 10:30, 10:30] = 1
    assert abs(aupro(big, noise) - 0.15) < 0.02
    assert np.isnan(aupro(np.zeros((1, 4, 4)), np.ones((1, 4, 4))))


def test_pixel_knn_control_scores_a_memorised_image_zero():
    rng = np.random.default_rng(0)
    train = ImageSet(class_ids=np.zeros(20), images=rng.integers(0, 30, (20, 8, 8, 1), dtype=np.uint8))
    query = ImageSet(
        class_ids=np.zeros(2),
        images=np.stack([train.images[3], np.full((8, 8, 1), 250, np.uint8)]),
    )
    positions, scores = pixel_knn_scores(train, query, image_size=8, channels=1, k=1)
    assert positions.tolist() == [0, 1]
    flat = train.images.reshape(20, -1) / 255.0
    nearest = np.sqrt(((flat - 250 / 255.0) ** 2).sum(1)).min()  # by hand: the nearest bright one
    assert scores[0] == pytest.approx(0.0, abs=1e-9), scores
    assert scores[1] == pytest.approx(nearest, rel=1e-9), (scores, nearest)


def test_synthetic_anomalies_are_the_same_set_every_time():
    splits = synthetic_splits(n_train=16, n_eval=8)
    normal = splits.train
    a = synthetic_anomalies(normal, ("stain", "shuffle"), 10, 5, image_size=16, channels=1)
    b = synthetic_anomalies(normal, ("stain", "shuffle"), 10, 5, image_size=16, channels=1)
    assert np.array_equal(a.images.images, b.images.images) and np.array_equal(a.masks, b.masks)
    assert len(a.images) == 10 and (a.images.labels == 1).all()
    assert {i.split(":")[1] for i in a.images.ids} == {"stain", "shuffle"}
    # A small validation set gives each image up to four differently damaged copies.
    few = normal.subset(np.arange(5))
    copies = synthetic_anomalies(few, ("stain",), 100, 0, image_size=16, channels=1)
    assert len(copies.images) == 20
    assert len({image.tobytes() for image in copies.images.images}) == 20


def test_the_map_can_be_chosen_on_the_regional_stains_alone():
    """blob_scale=both marks which synthetic stains are regions (their masks are, by edge per
    area); eval.synthetic_map_blobs=regions chooses the map on those alone. Shuffle scales with
    the image, so it counts as a region, but it is not local, so it never chooses a map."""
    normal = synthetic_splits(size=128, n_train=16, n_eval=8).train
    made = synthetic_anomalies(normal, ("stain", "shuffle"), 32, 3, image_size=128, channels=1, scale="both")
    stain = made.family_of(np.arange(len(made.images))) == "stain"
    assert made.regional[~stain].all()
    regions, specks = stain & made.regional, stain & ~made.regional
    assert regions.sum() >= 6 and specks.sum() >= 6, made.regional.tolist()
    edges = _edge_per_area(torch.from_numpy(made.masks[:, None].astype(np.float32)))
    assert edges[regions].mean() < 0.5 * edges[specks].mean(), (
        edges[regions].tolist(),
        edges[specks].tolist(),
    )
    assert made.map_choosers().tolist() == np.flatnonzero(stain).tolist()
    assert made.map_choosers("regions").tolist() == np.flatnonzero(regions).tolist()
    fine = synthetic_anomalies(normal, ("stain", "shuffle"), 32, 3, image_size=128, channels=1)
    assert not fine.regional[stain].any() and fine.regional[~stain].all()


# ------------------------------------------------------------------ training
def test_normal_only_training_selects_on_the_synthetic_validation_and_resumes_exactly(tmp_path):
    splits = synthetic_splits(n_train=64, n_eval=16, protocol="normal-only")
    splits.val = splits.train.subset(np.arange(48, 64))  # normal-only: held-out normals only
    splits.train = splits.train.subset(np.arange(48))
    config = tiny_config(
        **RESTORING, **{"train.epochs": 3, "train.threads": 1, "data.protocol": "normal-only"}
    )
    lines: list[str] = []
    straight = Trainer(config, splits, tmp_path / "a", log=lines.append, progress=False)
    metrics = straight.fit()
    assert metrics["selected_on"]["metric"] == "synthetic_val.auroc"
    for record in metrics["history"]:
        assert record["synthetic_val"]["families"] == ["stain", "shuffle"]
        assert record["synthetic_val"]["map"] in ("reconstruction", "segmentation", "patch")
        assert 0.0 <= record["synthetic_val"]["auroc"] <= 1.0
    assert all("synthetic val AUROC" in line for line in lines if line.startswith("epoch"))
    assert metrics["test"]["fpr_target"] == 0.05

    train_killed_then_resumed(config, splits, tmp_path / "b")
    a = load_checkpoint(checkpoint_path(tmp_path / "a", "last"))
    b = load_checkpoint(checkpoint_path(tmp_path / "b", "last"))
    for key, value in a.scoring_state_dict.items():  # corruptions drawn from the restored stream
        assert torch.equal(value, b.scoring_state_dict[key]), key


def read_back(benchmark: str, run: Path, out: Path, *extra: str) -> dict:
    """Run ``benchmarks/<benchmark>`` on a finished run; the figures it wrote to ``out``."""
    script = Path(__file__).parent.parent / "benchmarks" / benchmark
    done = subprocess.run(
        [sys.executable, str(script), str(run), "--json", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_the_cli_reports_margins_controls_and_the_synthetic_choice(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "skipganomaly", "train", "--dataset", "digits", "--abnormal-class", "0",
         "--protocol", "normal-only", "--image-size", "16", "--epochs", "2", "--output", str(run),
         *[arg for value in ("train.preset=restoring", "model.ngf=8", "model.ndf=8", "model.nz=16",
                             "model.knn_bank=64", "eval.synthetic_images=32", "train.threads=1")
           for arg in ("--set", value)]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selected_on"]["metric"] == "synthetic_val.auroc"
    margins = metrics["margins"]["test"]
    knn = metrics["controls"]["test"]["pixel_knn"]["auroc"]
    assert margins["over_pixel_knn"] == pytest.approx(metrics["test"]["auroc"] - knn)
    best = metrics["shortcuts"]["test"]["statistics"][margins["best_statistic"]]["separability"]
    assert margins["over_best_statistic"] == pytest.approx(metrics["test"]["auroc"] - best)
    assert "over the pixel-kNN control" in result.stdout
    assert "synthetic val AUROC" in result.stdout

    # benchmarks/map_choice.py redoes the run's choice of map as training made it, and on another
    # synthetic validation when asked.
    selected = {e["epoch"]: e for e in metrics["history"]}[metrics["epoch_best"]]["synthetic_val"]
    chosen = selected["map"]
    for extra, family, scale in (
        ([], "stain,shuffle", "pixels"),
        (["--family", "warp", "--blob-scale", "image"], "warp", "image"),
        (["--blob-scale", "both", "--map-blobs", "regions"], "stain,shuffle", "both"),
    ):
        figures = read_back("map_choice.py", run, tmp_path / f"{family}.json", *extra)
        assert (figures["synthetic_family"], figures["blob_scale"]) == (family, scale)
        assert figures["map_blobs"] == ("regions" if "--map-blobs" in extra else "all")
        assert all(0.0 <= v <= 1.0 for v in figures["synthetic_pixel_auroc"].values())
        assert 0.0 <= figures["synthetic_auroc"]["worst"] <= 1.0
        if not extra:
            assert figures["choice"]["map"] == chosen, (figures["choice"], chosen)
            # The run's score on its own synthetic validation: the figure that selected the epoch.
            assert figures["synthetic_auroc"]["by_family"] == pytest.approx(selected["by_family"], abs=1e-6)
            assert figures["synthetic_auroc"]["worst"] == pytest.approx(selected["auroc"], abs=1e-6)

    # benchmarks/term_choice.py reads the terms back with the model's standardisation: their sum
    # is the model's score (its test AUROC the run's), and each family set's pick is the subset
    # with the highest worst-family AUROC among the ones it printed.
    figures = read_back("term_choice.py", run, tmp_path / "terms.json")
    terms, subsets = figures["terms"], figures["subsets"]
    # (in float64 here, float32 in the model: rounding may swap a near tie or two)
    assert figures["rows"]["sum"]["test"] == pytest.approx(metrics["test"]["auroc"], abs=1e-3)
    assert subsets["+".join(terms)] == figures["rows"]["sum"]
    assert len(subsets) == 2 ** len(terms) - 1
    for family_set, pick in figures["chosen"].items():
        families = family_set.split(",")
        best = max(min(row[f] for f in families) for row in subsets.values())
        assert pick["worst"] == pytest.approx(best), (family_set, pick, best)
        assert subsets[pick["terms"]]["test"] == pick["test"]
    for row in figures["rows"].values():
        assert set(row) == {
            "stain",
            "shuffle",
            "chimera",
            "warp",
            "overlay",
            "overlay-matched",
            "bend",
            "test",
        }
        assert all(0.0 <= v <= 1.0 for v in row.values()), row

    # benchmarks/patch_features.py: the patch term's nearest-region distance on each kind of
    # region features, G's encoder among them.
    rows = read_back("patch_features.py", run, tmp_path / "regions.json")["rows"]
    assert list(rows) == ["D trained", "D at initialisation", "pixels", "G's encoder"]
    for name, row in rows.items():
        assert 0.0 <= row["synthetic_worst"] <= 1.0 and 0.0 <= row["test"] <= 1.0, (name, row)

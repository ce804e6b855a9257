"""The anomaly map's smoothing (``model.map_smoothing``): the Gaussian against hand-computed
values, the refusals, a model that stays what it was without candidates, the choice on labelled
validation masks and on the synthetic anomalies' masks, and the export's map against PyTorch's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import synthetic_splits, tiny_config
from fixture_data import write_mvtec

from skipganomaly.data import prepare_data
from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.objective import gaussian_smoothing
from skipganomaly.scoring.decisions import choose_map
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.specs.models import parse_map_smoothing
from skipganomaly.training.trainer import Trainer


def test_gaussian_smoothing_against_hand_computed_values():
    maps = torch.zeros(1, 21, 21)
    maps[0, 10, 10] = 1.0
    sigma, radius = 1.5, 5
    smoothed = gaussian_smoothing(maps, torch.tensor(sigma), radius)
    taps = [math.exp(-(t * t) / (2 * sigma * sigma)) for t in range(-radius, radius + 1)]
    total = sum(taps)
    for dy, dx in ((0, 0), (1, 0), (2, 3), (5, 5)):
        expected = taps[radius + dy] * taps[radius + dx] / total**2
        assert smoothed[0, 10 + dy, 10 + dx].item() == pytest.approx(expected, rel=1e-5), (dy, dx)
    assert smoothed[0, 10, 16].item() == 0.0  # beyond the radius
    assert smoothed.sum().item() == pytest.approx(1.0, rel=1e-5)  # mass kept away from the edges
    # Edges are mirrored: a hot corner pixel is smoothed like a hot centre one, not given the
    # weight of a quarter-plane (replicated edges would make it about 0.25 here).
    corner = torch.zeros(1, 21, 21)
    corner[0, 0, 0] = 1.0
    assert gaussian_smoothing(corner, torch.tensor(sigma), radius)[0, 0, 0].item() == pytest.approx(
        smoothed[0, 10, 10].item(), rel=1e-5
    )
    # A constant map stays constant, and sigma 0 changes nothing at all.
    flat = torch.full((2, 8, 8), 0.25)
    assert torch.allclose(gaussian_smoothing(flat, torch.tensor(3.0), 7), flat, atol=1e-6)
    noisy = torch.rand(3, 16, 16)
    assert torch.equal(gaussian_smoothing(noisy, torch.tensor(0.0), 4), noisy)
    assert gaussian_smoothing(noisy, torch.tensor(2.0), 6).std() < noisy.std()


@pytest.mark.parametrize(
    "text, said",
    [("0,abc", "is not a fraction"), ("-0.1", "is not a fraction"), ("0.3", "is not a fraction"),
     ("nan", "is not a fraction"), ("0,0.02,0.02", "twice")],
)  # fmt: skip
def test_bad_smoothings_are_refused_in_one_line(text, said):
    with pytest.raises(UserError, match=said):
        build_config({"model.map_smoothing": text})
    assert parse_map_smoothing("0, 0.02,0.06") == (0.0, 0.02, 0.06)


def test_without_candidates_the_model_is_what_it_was_and_the_terms_never_move():
    torch.manual_seed(0)
    plain = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent")
    torch.manual_seed(0)
    smooth = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent", map_smoothing="0,0.1")
    assert "map_smoothing" not in plain.args and "map_smoothing" not in plain.state_dict()
    assert smooth.args["map_smoothing"] == "0,0.1" and float(smooth.map_smoothing) == 0.0
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    plain.eval(), smooth.eval()
    a, b = plain.score(x, details=True), smooth.score(x, details=True)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.score, b.score)
    smooth.set_map_smoothing(0.1)
    c = smooth.score(x, details=True)
    assert torch.equal(c.score, a.score) and torch.equal(c.terms["reconstruction"], a.terms["reconstruction"])
    expected = gaussian_smoothing(a.anomaly_map, torch.tensor(1.6), math.ceil(3 * 0.1 * 16))
    assert torch.allclose(c.anomaly_map, expected, atol=1e-6)
    assert c.anomaly_map.std() < a.anomaly_map.std()


def test_choose_map_over_sources_and_smoothings():
    chosen = choose_map(
        {("reconstruction", 0.0): 0.7, ("reconstruction", 0.04): 0.9, ("segmentation", 0.0): 0.8}
    )
    assert chosen == ("reconstruction", 0.04, "none")
    # Ties: the reconstruction error, then the first smoothing given.
    source, smoothing, _ = choose_map(
        {("segmentation", 0.0): 0.8, ("reconstruction", 0.02): 0.8, ("reconstruction", 0.0): 0.8}
    )
    assert (source, smoothing) == ("reconstruction", 0.02)
    assert choose_map({"segmentation": 0.9, "reconstruction": 0.6})[:2][0] == "segmentation"


def test_labelled_validation_masks_choose_the_smoothing_and_the_export_follows(tmp_path):
    from skipganomaly.deploy.detector import Detector, TorchEngine

    category = write_mvtec(tmp_path / "widget", n_train=16, n_good=6, n_defect=4)
    config = tiny_config(
        **{"data.dataset": "mvtec", "data.root": str(category), "data.protocol": "val-split",
           "train.epochs": 1, "train.threads": 1, "model.map_smoothing": "0,0.05,0.15"}
    )  # fmt: skip
    splits = prepare_data(config.data)
    assert any(m is not None for m in splits.val.masks)  # validation holds masked anomalies
    lines: list[str] = []
    metrics = Trainer(config, splits, tmp_path / "run", log=lines.append, progress=False).fit()
    choice = metrics["history"][0]["map_choice"]
    measured = choice["pixel_auroc"]
    assert set(measured) == {"reconstruction", "reconstruction@0.05", "reconstruction@0.15"}
    best = max(measured, key=lambda k: (measured[k], -len(k)))
    assert choice["map"] == "reconstruction"
    assert choice["map_smoothing"] == (0.0 if best == "reconstruction" else float(best.split("@")[1]))
    model = load_checkpoint(checkpoint_path(tmp_path / "run", "best")).build_model()
    assert float(model.map_smoothing) == pytest.approx(choice["map_smoothing"])
    assert any("map reconstruction" in line for line in lines if line.startswith("epoch"))
    # The exported graph smooths as the checkpoint does (candidates without 0: some smoothing).
    config.model.map_smoothing = "0.1,0.2"
    Trainer(config, splits, tmp_path / "smooth", log=lambda s: None, progress=False).fit()
    chosen = float(load_checkpoint(checkpoint_path(tmp_path / "smooth", "best")).build_model().map_smoothing)
    assert chosen in (pytest.approx(0.1), pytest.approx(0.2))
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    onnx_out = Detector.from_run(tmp_path / "smooth").engine.run(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    raw = (x - torch.from_numpy(onnx_out["reconstructed"])).abs().mean(1)
    expected = gaussian_smoothing(raw, torch.tensor(chosen * 16), math.ceil(3 * 0.2 * 16)).numpy()
    difference = np.abs(onnx_out["anomaly_map"] - expected).max()
    assert difference <= 1e-4, f"largest map difference {difference:.2e}"
    assert np.abs(onnx_out["anomaly_map"] - raw.numpy()).max() > 100 * difference  # it does smooth
    # PyTorch's engine keeps maps in float16: equal to that precision.
    torch_maps = TorchEngine(tmp_path / "smooth", device="cpu").run(images)["anomaly_map"]
    assert np.abs(torch_maps - onnx_out["anomaly_map"]).max() <= 1e-3


def test_normal_only_chooses_the_smoothing_on_the_synthetic_masks(tmp_path):
    splits = synthetic_splits(n_train=48, n_eval=16, protocol="normal-only")
    splits.val = splits.train.subset(np.arange(32, 48))
    splits.train = splits.train.subset(np.arange(32))
    config = tiny_config(
        **{"train.preset": "restoring", "train.ema_decay": 0.9, "model.knn_bank": 32,
           "eval.synthetic_images": 16, "train.epochs": 1, "train.threads": 1,
           "data.protocol": "normal-only", "model.map_smoothing": "0,0.1", "model.map_baseline": "none"}
    )  # fmt: skip
    metrics = Trainer(config, splits, tmp_path / "run", log=lambda s: None, progress=False).fit()
    record = metrics["history"][0]["synthetic_val"]
    assert set(record["pixel_auroc"]) == {
        "reconstruction", "reconstruction@0.1", "segmentation", "segmentation@0.1", "patch", "patch@0.1"
    }  # fmt: skip
    name = record["map"] if not record["map_smoothing"] else f"{record['map']}@{record['map_smoothing']:g}"
    assert record["pixel_auroc"][name] == max(record["pixel_auroc"].values())
    model = load_checkpoint(checkpoint_path(tmp_path / "run", "best")).build_model()
    assert float(model.map_smoothing) == pytest.approx(record["map_smoothing"])

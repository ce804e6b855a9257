"""The anomaly map less the normal validation images' mean map (``model.map_baseline``): the
refusals, a model that stays what it was without it, the subtraction, the choice on the synthetic
anomalies' masks, the buffer a run fills, and the export's map against PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_splits, tiny_config

from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import SkipGANomaly
from skipganomaly.scoring.decisions import choose_map, map_key_text
from skipganomaly.scoring.engine import ScoringOptions, score_set
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.training.trainer import Trainer


@pytest.mark.parametrize("text", ["median", "none,none", "", "mean,x"])
def test_map_baseline_refuses_unknown_names(text):
    with pytest.raises(UserError, match="map_baseline"):
        build_config({"model.map_baseline": text})


def test_without_a_baseline_the_model_is_unchanged_and_with_one_its_map_is_less_it():
    plain = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent")
    based = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent", map_baseline="none,mean")
    assert "map_baseline" not in plain.args and not any("baseline" in k for k in plain.state_dict())
    assert based.args["map_baseline"] == "none,mean"
    based.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), based.eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    mean_map = torch.linspace(0, 1, 256).reshape(16, 16)
    with torch.no_grad():
        before = plain.score(x, details=True)
        torch.testing.assert_close(based.score(x, details=True).anomaly_map, before.anomaly_map)  # off
        based.set_map_baseline(mean_map)
        after = based.score(x, details=True)
        torch.testing.assert_close(after.anomaly_map, before.anomaly_map - mean_map)
        torch.testing.assert_close(after.score, before.score)  # the score's terms do not change
        based.set_map_baseline(None)
        torch.testing.assert_close(based.score(x, details=True).anomaly_map, before.anomaly_map)


def test_choose_map_over_baselines_and_the_history_names():
    measured = {
        ("reconstruction", 0.0, "none"): 0.6,
        ("reconstruction", 0.0, "mean"): 0.8,
        ("reconstruction", 0.02, "none"): 0.8,
    }
    # A tie keeps the first given (no baseline at 0.0 loses to the mean; the mean ties 0.02).
    assert choose_map(measured)[1:] == (0.0, "mean")
    assert [map_key_text(k) for k in measured] == [
        "reconstruction", "reconstruction-mean", "reconstruction@0.02"
    ]  # fmt: skip


def normal_only_run(tmp_path, baseline: str):
    splits = synthetic_splits(n_train=48, n_eval=16, protocol="normal-only")
    splits.val = splits.train.subset(np.arange(32, 48))
    splits.train = splits.train.subset(np.arange(32))
    config = tiny_config(
        **{"train.preset": "restoring", "train.ema_decay": 0.9, "model.knn_bank": 32,
           "eval.synthetic_images": 16, "train.epochs": 1, "train.threads": 1,
           "data.protocol": "normal-only", "model.map_baseline": baseline}
    )  # fmt: skip
    metrics = Trainer(config, splits, tmp_path, log=lambda s: None, progress=False).fit()
    return config, splits, metrics


def test_normal_only_chooses_the_baseline_on_the_synthetic_masks(tmp_path):
    _, _, metrics = normal_only_run(tmp_path, "none,mean")
    record = metrics["history"][0]["synthetic_val"]
    assert set(record["pixel_auroc"]) == {
        "reconstruction@0.01", "reconstruction@0.01-mean", "segmentation@0.01", "segmentation@0.01-mean",
        "patch@0.01", "patch@0.01-mean",
    }  # fmt: skip
    name = f"{record['map']}@0.01" + ("-mean" if record["map_baseline"] == "mean" else "")
    assert record["pixel_auroc"][name] == max(record["pixel_auroc"].values()), record
    model = load_checkpoint(checkpoint_path(tmp_path, "best")).build_model()
    assert float(model.map_baseline_on) == float(record["map_baseline"] == "mean")


def test_a_run_fills_the_baseline_with_the_normal_mean_map_and_the_export_subtracts_it(tmp_path):
    from fixture_data import write_mvtec

    from skipganomaly.data import prepare_data
    from skipganomaly.deploy.detector import Detector, TorchEngine

    category = write_mvtec(tmp_path / "widget", n_train=16, n_good=6, n_defect=4)
    config = tiny_config(
        **{"data.dataset": "mvtec", "data.root": str(category), "data.protocol": "val-split",
           "train.epochs": 1, "train.threads": 1, "model.map_baseline": "mean"}
    )  # fmt: skip
    splits = prepare_data(config.data)
    run = tmp_path / "run"
    metrics = Trainer(config, splits, run, log=lambda s: None, progress=False).fit()
    assert metrics["history"][0]["map_choice"]["map_baseline"] == "mean"
    model = load_checkpoint(checkpoint_path(run, "best")).build_model().eval()
    assert float(model.map_baseline_on) == 1.0
    stored = model.map_baseline.clone()
    options = ScoringOptions.for_run(config, splits.channels, torch.device("cpu"), None).replace(details=True)
    model.set_map_baseline(None)
    normal = splits.val.subset(np.flatnonzero(splits.val.labels == 0))
    normal_maps = torch.from_numpy(score_set(model, normal, options).anomaly_maps.astype(np.float32))
    # Maps are kept in float16 by the scoring engine: equal to that precision.
    difference = (normal_maps.mean(0) - stored).abs().max().item()
    assert difference < 2e-3, f"largest baseline difference {difference:.2e}"
    assert stored.abs().max() > 0.01
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    onnx_maps = Detector.from_run(run).engine.run(images)["anomaly_map"]
    torch_maps = TorchEngine(run, device="cpu").run(images)["anomaly_map"]
    assert np.abs(torch_maps - onnx_maps).max() <= 1e-3
    assert (onnx_maps < 0).any()  # below the normal mean somewhere: the mean was subtracted

"""Data sets through training and the CLI: pixel AUROC from MVTec masks, a folder data set end
to end in a subprocess, and the CLI's one-line errors on bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_CLI, run_cli, tiny_config
from fixture_data import write_class_folders, write_mvtec
from torch import nn

from skipganomaly.cli import main
from skipganomaly.data import prepare_data
from skipganomaly.models.objective import ScoreOutput
from skipganomaly.scoring.engine import ScoringOptions, pixel_masks, pixel_metrics, split_pixel_metrics
from skipganomaly.specs.config import build_config


class BrightnessModel(nn.Module):
    """Scores each pixel by its brightness (or its darkness): a model whose pixel AUROC is known."""

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.sign = sign
        self.weight = nn.Parameter(torch.zeros(1))

    def score(self, x, score_lambda=0.9, details=False):
        maps = self.sign * x.mean(1)
        per_image = maps.flatten(1).mean(1)
        out = ScoreOutput(score=per_image, reconstruction=per_image, latent=torch.zeros_like(per_image))
        if details:
            out.anomaly_map, out.reconstructed, out.features = maps, x, x.flatten(1)[:, :4]
        return out


def test_pixel_auroc_against_masks(tmp_path):
    # Defects are bright squares that their masks mark; normal pixels are darker.
    category = write_mvtec(tmp_path / "widget")
    config = build_config({"data.dataset": "mvtec", "data.root": str(category), "data.image_size": 32})
    splits = prepare_data(config.data)
    options = ScoringOptions.for_run(config, splits.channels, torch.device("cpu"), None, splits.protocol)
    bright = pixel_metrics(BrightnessModel(1.0), splits.test, options)
    assert bright == {"pixel_auroc": 1.0, "aupro": 1.0, "pixel_images": len(splits.test)}
    reversed_maps = pixel_metrics(BrightnessModel(-1.0), splits.test, options)
    assert reversed_maps["pixel_auroc"] == 0.0
    assert reversed_maps["aupro"] < 0.05, reversed_maps  # no region found below FPR 0.3
    # Abnormal images without a mask file are left out; normal ones count with an all-normal mask.
    splits.test.masks = [None] * len(splits.test)
    assert pixel_metrics(BrightnessModel(1.0), splits.test, options) is None


class TemplateModel(BrightnessModel):
    """The same map for every image: it knows where defects usually are and nothing else."""

    def __init__(self, template: torch.Tensor):
        super().__init__()
        self.template = template

    def score(self, x, score_lambda=0.9, details=False):
        out = super().score(x, score_lambda, details)
        if details:
            out.anomaly_map = self.template.expand(x.shape[0], *self.template.shape)
        return out


def test_location_control_tells_a_map_of_where_defects_usually_are(tmp_path):
    category = write_mvtec(tmp_path / "widget", n_defect=4)
    config = build_config({"data.dataset": "mvtec", "data.root": str(category), "data.image_size": 32})
    splits = prepare_data(config.data)
    options = ScoringOptions.for_run(config, splits.channels, torch.device("cpu"), None, splits.protocol)
    _, masks = pixel_masks(splits.test, 32)
    # How often each pixel is defective in this test split: a map that knows the set, not the image.
    where = split_pixel_metrics(
        TemplateModel(torch.from_numpy(masks.mean(0, dtype=np.float32))), splits, options
    )
    fixed = where["test"]
    assert fixed["pixel_auroc"] > 0.7, fixed  # high, and all of it location
    assert fixed["location_control"] == fixed["pixel_auroc"] and fixed["pixel_margin"] == 0.0, fixed
    assert "location_control" not in where["val"]  # its normals made the control
    bright = split_pixel_metrics(BrightnessModel(1.0), splits, options)["test"]
    assert bright["pixel_auroc"] == 1.0 and bright["pixel_margin"] > 0.3, bright


def test_mvtec_training_reports_image_and_pixel_auroc(tmp_path):
    from skipganomaly.training.trainer import Trainer

    category = write_mvtec(tmp_path / "widget", n_train=16)
    config = tiny_config(**{"data.dataset": "mvtec", "data.root": str(category), "train.epochs": 1})
    splits = prepare_data(config.data)
    metrics = Trainer(config, splits, tmp_path / "run", log=lambda s: None, progress=False).fit()
    for part in ("val", "test"):
        assert 0.0 <= metrics[part]["auroc"] <= 1.0
        assert 0.0 <= metrics[part]["pixel_auroc"] <= 1.0
        assert metrics[part]["pixel_images"] == len(getattr(splits, part))
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["test"]["pixel_auroc"] == pytest.approx(metrics["test"]["pixel_auroc"])
    test = stored["test"]
    assert test["pixel_margin"] == pytest.approx(test["pixel_auroc"] - test["location_control"], abs=1e-12)
    scores = (tmp_path / "run" / "scores.csv").read_text()
    assert ",crack," in scores and ",good," in scores  # defect types in the class column
    # The test verb re-evaluates the best checkpoint, pixel AUROC included.
    assert main(["test", "--run", str(tmp_path / "run"), "--output", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    # The same weights through the same scoring path (memory format, batch size, threads).
    assert again["test"]["pixel_auroc"] == pytest.approx(metrics["test"]["pixel_auroc"], abs=1e-9)


def test_cli_trains_on_a_folder_data_set(tmp_path):
    counts = {"train": {"bolt": 24, "nut": 8}, "test": {"bolt": 6, "nut": 6}}
    root = write_class_folders(tmp_path / "parts", counts, size=20)
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--abnormal-class",
        "nut",
        "--epochs",
        "1",
        "--output",
        run_dir,
        *TINY_CLI,
    )
    assert result.returncode == 0, result.stderr
    assert "evaluation pool: 6:14 (normal:abnormal)" in result.stdout
    assert "protocol val-split: train 24 normal images; validation 3:7; test 3:7" in result.stdout
    assert f"images from {root}: in memory" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "folder" and metrics["abnormal_classes"] == ["nut"]
    assert metrics["counts"]["train"]["total"] == 24
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0 and 0.0 <= metrics["val"]["auroc"] <= 1.0
    assert f"test AUROC {metrics['test']['auroc']:.4f}" in result.stdout


@pytest.mark.parametrize(
    "layout, extra, fragment",
    [
        ("corrupt", [], "zz_broken.png cannot be read"),
        ("ok", ["--abnormal-class", "gear"], "'gear' is not a class of folder; choose one of: bolt, nut"),
        ("missing", [], "does not exist"),
        ("empty", [], "holds no image files"),
    ],
)
def test_cli_data_errors_are_one_line_exit_2(tmp_path, capsys, layout, extra, fragment):
    root = tmp_path / "parts"
    if layout != "missing":
        write_class_folders(root, {"train": {"bolt": 3, "nut": 3}, "test": {"bolt": 2, "nut": 2}}, size=16)
    if layout == "corrupt":
        (root / "test" / "bolt" / "zz_broken.png").write_bytes(b"GIF89a truncated")
    if layout == "empty":
        (root / "test" / "washer").mkdir()
    extra = extra or ["--abnormal-class", "nut"]
    code = main(
        ["train", "--dataset", "folder", "--data-root", str(root), *extra, "--output", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing written for a run that could not start


def test_skipped_images_are_counted_in_the_run_log(tmp_path):
    from skipganomaly.training.trainer import Trainer

    root = write_class_folders(
        tmp_path / "parts", {"train": {"a": 20, "b": 4}, "test": {"a": 4, "b": 4}}, size=16
    )
    (root / "train" / "a" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    config = tiny_config(
        **{
            "data.dataset": "folder",
            "data.root": str(root),
            "data.abnormal_class": "b",
            "data.skip_bad_images": True,
            "train.epochs": 1,
        }
    )
    splits = prepare_data(config.data)
    Trainer(config, splits, tmp_path / "run", log=lambda s: None, progress=False).fit()
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["skipped_bad_images"] == 1
    assert np.all(splits.train.class_ids == 0) and len(splits.train) == 20


def test_example_configs_are_valid():
    from skipganomaly.specs.bundled_configs import bundled_configs
    from skipganomaly.specs.config import flatten_keys, load_yaml

    configs = bundled_configs()  # the package's own files (importlib.resources)
    assert {"paper-cifar10", "reference-cifar10", "mvtec-bottle", "digits", "digits-quick"} <= set(configs)
    loaded = {name: build_config(flatten_keys(load_yaml(path))) for name, path in configs.items()}
    assert loaded["paper-cifar10"].train.preset == "paper" and loaded["paper-cifar10"].train.lr == 2e-3
    assert loaded["reference-cifar10"].train.preset == "reference"
    assert loaded["mvtec-bottle"].data.image_size == 128 and loaded["mvtec-bottle"].data.dataset == "mvtec"
    # The quick start is reproduce's light digits profile, value for value, but for the preset:
    # reproduce reproduces the paper (its preset), the quick start shows the default, improved one.
    from skipganomaly.report.profiles import LIGHT

    quick = loaded["digits-quick"].to_dict()
    for key, value in LIGHT["digits"].overrides.items():
        section, name = key.split(".")
        assert quick[section][name] == (value if key != "train.preset" else "improved"), key
    assert loaded["digits-quick"].model.rotation_head and loaded["digits-quick"].train.ema_decay > 0

"""The checkpoint file: its typed view, its on-disk layout, and files written by release 0.1.0."""

from pathlib import Path

import pytest
import torch
from conftest import synthetic_splits, tiny_config

from skipganomaly.data import prepare_data
from skipganomaly.data.base import SplitInfo
from skipganomaly.deploy.predict import Predictor
from skipganomaly.evaluation.record import evaluate_run
from skipganomaly.formats.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    load_run_checkpoint,
    save_checkpoint,
)
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.training.trainer import Trainer

# Written by skipganomaly 0.1.0 (format version 1) with
#   skipganomaly train --dataset digits --abnormal-class 0 --image-size 16 --epochs 1 --batch-size 32
#     --set model.ngf=4 --set model.ndf=4 --set model.nz=4 --set train.threads=1
# whose metrics.json said: epoch_best 1, val AUROC 0.0801, test AUROC 0.0621.
RELEASE_0_1_0 = Path(__file__).parent / "fixtures" / "checkpoint-v1.pt"


def test_a_checkpoint_of_release_0_1_0_loads_and_evaluates_as_it_did():
    raw = torch.load(RELEASE_0_1_0, weights_only=True)
    assert (raw["format_version"], raw["package_version"]) == (1, "0.1.0")
    checkpoint = load_checkpoint(RELEASE_0_1_0)
    assert (checkpoint.model_name, checkpoint.image_size, checkpoint.channels) == ("skipganomaly", 16, 1)
    assert checkpoint.protocol == "val-split" and checkpoint.epoch == 1
    assert checkpoint.best.epoch == 1 and checkpoint.best.metric == "val.auroc"
    assert checkpoint.normalization.to_dict() == raw["normalization"]
    assert checkpoint.preprocessing.to_dict() == {
        "image_size": 16,
        "channels": 1,
        "resample": "bilinear",
        "input_range": [-1.0, 1.0],
    }
    assert checkpoint.data.dataset == "digits" and checkpoint.data.evaluation_pool == {
        "normal": 324,
        "abnormal": 178,
    }
    # Its weights score the run's splits as they did when it was written (AUROC ranks the scores,
    # so the tolerance only absorbs a swap of near-ties on another CPU).
    config = checkpoint.config
    splits = prepare_data(config.data)
    metrics = evaluate_run(checkpoint, splits, config, torch.device("cpu"), None).metrics
    assert metrics["epoch_best"] == 1
    assert metrics["val"]["auroc"] == pytest.approx(0.0801, abs=0.01), metrics["val"]
    assert metrics["test"]["auroc"] == pytest.approx(0.0621, abs=0.01), metrics["test"]


def test_the_typed_view_writes_the_same_layout_it_reads(tmp_path):
    checkpoint = load_checkpoint(RELEASE_0_1_0)
    save_checkpoint(tmp_path / "again.pt", checkpoint)
    raw = torch.load(RELEASE_0_1_0, weights_only=True)
    again = torch.load(tmp_path / "again.pt", weights_only=True)  # still plain values only
    # The same layout, plus the content hashes a file of 0.1.0 does not have (still version 1:
    # 0.1.0 reads the new files, ignoring the two keys).
    assert (
        set(again) == set(raw) | {"content_hash", "state_hash"}
        and again["format_version"] == FORMAT_VERSION == 1
    )
    for key in ("model", "epoch", "normalization", "history", "best", "package_version"):
        assert again[key] == raw[key], key
    # The stored configuration as it was; keys added to the package since come at their defaults
    # (the faithful values: a file written before the improved preset existed never used it).
    defaults = build_config({"train.preset": "reference"}).to_dict()
    for section, values in again["config"].items():
        for name, value in values.items():
            expected = raw["config"][section].get(name, defaults[section][name])
            assert value == expected, f"config {section}.{name}"
    assert all(torch.equal(again["state_dict"][k], v) for k, v in raw["state_dict"].items())
    assert SplitInfo.from_dict(again["data"]) == SplitInfo.from_dict(raw["data"])
    reloaded = load_checkpoint(tmp_path / "again.pt")
    assert isinstance(reloaded, Checkpoint) and reloaded.config == checkpoint.config


def test_deployment_reads_everything_from_the_checkpoint(tmp_path):
    Trainer(
        tiny_config(**{"train.epochs": 1}), synthetic_splits(), tmp_path / "run", log=lambda s: None
    ).fit()
    checkpoint = load_run_checkpoint(tmp_path / "run")
    model = checkpoint.build_model().eval()
    x = torch.zeros(2, checkpoint.channels, checkpoint.image_size, checkpoint.image_size)
    assert model.score(x).score.shape == (2,)
    predictor = Predictor(checkpoint, device="cpu")
    assert predictor.normalization.threshold == checkpoint.normalization.threshold
    assert (predictor.image_size, predictor.channels) == (16, 1)


def test_files_that_are_not_checkpoints_are_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_run_checkpoint(tmp_path / "nowhere")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"format": "something else"}, checkpoint_path(tmp_path / "run", "best"))
    with pytest.raises(UserError, match="is not a skipganomaly checkpoint"):
        load_run_checkpoint(tmp_path / "run")
    raw = torch.load(RELEASE_0_1_0, weights_only=True)
    torch.save(dict(raw, format_version=FORMAT_VERSION + 1), tmp_path / "newer.pt")
    with pytest.raises(UserError, match="newer skipganomaly"):
        load_checkpoint(tmp_path / "newer.pt")
    raw["config"]["train"]["nonsense"] = 1
    torch.save(raw, tmp_path / "odd.pt")
    with pytest.raises(UserError, match=r"odd\.pt: config key 'train\.nonsense' is unknown"):
        load_checkpoint(tmp_path / "odd.pt")


def test_split_info_round_trips_and_ignores_keys_it_does_not_know():
    info = SplitInfo(dataset="x", normal_classes=["a"], evaluation_pool={"normal": 1, "abnormal": 2}, masks=3)
    assert SplitInfo.from_dict(info.to_dict()) == info
    assert SplitInfo.from_dict({**info.to_dict(), "from_the_future": True}) == info

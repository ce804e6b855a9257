"""The paper protocol scored beside an honest one, and TensorBoard event files."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import labelled_source, tiny_config

from skipganomaly.data.splits import make_splits
from skipganomaly.protocols.paper import summarize_paper_protocol
from skipganomaly.tensorboard_log import EVENTS_DIR, EventMirror
from skipganomaly.trainer import Trainer


def _fit(config, splits, run_dir):
    trainer = Trainer(config, splits, run_dir, log=lambda s: None, progress=False)
    return trainer, trainer.fit()


def test_paper_evaluation_is_the_paper_protocols_test_set():
    source = labelled_source()
    honest = make_splits(source, tiny_config(**{"data.abnormal_class": "noise"}).data)
    paper = make_splits(
        source, tiny_config(**{"data.abnormal_class": "noise", "data.protocol": "paper"}).data
    )
    view = honest.paper_evaluation_set()
    # Normal: the 2 x 20 test images of the other classes; abnormal: all 60 + 20 noise images.
    assert len(view) == len(honest.val) + len(honest.test) == 120
    np.testing.assert_array_equal(view.images, paper.test.images)
    np.testing.assert_array_equal(view.labels, np.r_[np.zeros(40, int), np.ones(80, int)])
    assert honest.paper_evaluation_set() is view  # built once per Splits


def test_one_training_gives_the_honest_and_the_paper_figures(tmp_path):
    source = labelled_source()
    values = {"data.abnormal_class": "noise", "train.epochs": 2}
    honest_splits = make_splits(source, tiny_config(**values).data)
    plain, plain_metrics = _fit(tiny_config(**values), honest_splits, tmp_path / "plain")
    both, metrics = _fit(
        tiny_config(**values, **{"eval.paper_each_epoch": True}), honest_splits, tmp_path / "both"
    )
    paper_config = tiny_config(**values, **{"data.protocol": "paper"})
    paper, paper_metrics = _fit(paper_config, make_splits(source, paper_config.data), tmp_path / "paper")

    # Scoring the paper protocol changes nothing in the training.
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, both.model.state_dict()[key]), key
    assert metrics["test"]["auroc"] == plain_metrics["test"]["auroc"]
    # Each epoch's paper figure is what a separate --protocol paper run measures on the same weights.
    per_epoch = [h["paper"]["auroc"] for h in metrics["history"]]
    assert per_epoch == pytest.approx([h["test"]["auroc"] for h in paper_metrics["history"]], abs=1e-12)
    summary = metrics["paper_protocol"]
    assert summary["auroc"] == max(per_epoch)
    assert summary["epoch"] == 1 + int(np.argmax(per_epoch))
    assert "OPTIMISTIC" in summary["note"]
    assert plain_metrics["paper_protocol"] is None
    logged = [json.loads(line) for line in (tmp_path / "both" / "log.jsonl").read_text().splitlines()]
    assert [r["paper"]["auroc"] for r in logged if r.get("event") == "epoch"] == per_epoch


def test_paper_summary_skips_unscored_epochs():
    history = [
        {"epoch": 1, "paper": {"auroc": 0.7, "auprc": 0.5, "best_f1": 0.6, "eer": 0.3}},
        {"epoch": 2, "paper": {"auroc": float("nan"), "auprc": 0.5, "best_f1": 0.6, "eer": 0.3}},
        {"epoch": 3, "paper": {"auroc": 0.9, "auprc": 0.8, "best_f1": 0.85, "eer": 0.1}},
        {"epoch": 4},
    ]
    summary = summarize_paper_protocol(history)
    assert (summary["epoch"], summary["auroc"], summary["best_f1"]) == (3, 0.9, 0.85)
    assert summarize_paper_protocol([{"epoch": 1}]) is None


class FakeWriter:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_event_mirror_maps_log_records_to_scalars():
    writer = FakeWriter()
    mirror = EventMirror(writer, steps_per_epoch=20)
    mirror({"event": "step", "epoch": 2, "step": 3, "g": 1.5, "d": 0.25})
    mirror(
        {
            "event": "epoch",
            "epoch": 2,
            "lr": 2e-4,
            "losses": {"g": 1.0, "d_reinits": 0},
            "val": {"auroc": 0.8},
            "test": {"auroc": float("nan")},
            "paper": {"auroc": 0.9},
            "seconds": 4.0,
        }
    )
    mirror({"event": "end"})
    assert ("loss/g", 1.5, 23) in writer.scalars and ("loss/d", 0.25, 23) in writer.scalars
    tags = {tag: (value, step) for tag, value, step in writer.scalars}
    assert tags["val/auroc"] == (0.8, 2) and tags["paper/auroc"] == (0.9, 2) and tags["epoch/lr"] == (2e-4, 2)
    assert "test/auroc" not in tags  # nan is not drawn
    assert writer.closed


def test_without_tensorboard_no_event_files(tmp_path, monkeypatch, splits):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when absent
    _fit(tiny_config(**{"train.epochs": 1}), splits, tmp_path / "run")
    assert (tmp_path / "run" / "log.jsonl").is_file()
    assert not (tmp_path / "run" / EVENTS_DIR).exists()


def test_with_tensorboard_event_files_are_written(tmp_path, splits):
    pytest.importorskip("tensorboard")
    _fit(tiny_config(**{"train.epochs": 1}), splits, tmp_path / "run")
    assert list((tmp_path / "run" / EVENTS_DIR).glob("events.out.tfevents.*"))

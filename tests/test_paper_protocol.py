"""The paper protocol scored beside an honest one, and TensorBoard event files."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import labelled_source, score_tiny, smooth_images, tiny_config
from fixture_data import CIFAR_CLASSES, write_cifar_python, write_class_folders, write_idx
from numerics import assert_close

from skipganomaly.data import prepare_data
from skipganomaly.data.base import ImageSet, LabelledSource, SplitInfo, official_evaluation_order
from skipganomaly.data.cifar import read_batch
from skipganomaly.data.splits import make_splits
from skipganomaly.evaluation.paper import summarize_paper_protocol
from skipganomaly.models import SkipGANomaly
from skipganomaly.specs.config import build_config
from skipganomaly.training.tensorboard import EVENTS_DIR, EventMirror
from skipganomaly.training.trainer import Trainer


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


def _data_config(tmp_path, **values):
    return build_config({"data.cache_dir": str(tmp_path / "cache"), **values}).data


def _normal_ids(splits):
    return [i for i, label in zip(splits.test.ids, splits.test.labels, strict=True) if label == 0]


def test_class_folders_are_mixed_not_class_sorted(tmp_path):
    """Class folders come class after class; the paper protocol mixes the normal classes (seeded),
    as CIFAR-10's own test order does, and keeps the abnormal class's train-then-test order."""
    counts = {"train": dict.fromkeys(CIFAR_CLASSES, 3), "test": dict.fromkeys(CIFAR_CLASSES, 4)}
    root = write_class_folders(tmp_path / "cifar_jpeg", counts, size=32)
    values = {"data.dataset": "cifar10", "data.root": str(root), "data.abnormal_class": "automobile"}
    paper = prepare_data(_data_config(tmp_path, **values, **{"data.protocol": "paper"}))
    assert paper.info.original_order is False
    labels, classes = paper.test.labels, paper.test.class_ids
    assert list(labels) == [0] * 36 + [1] * 7
    normal_classes = classes[:36]
    assert sorted(normal_classes) == sorted(np.repeat([0, 2, 3, 4, 5, 6, 7, 8, 9], 4))
    assert (np.diff(normal_classes) < 0).any(), f"normal part is class-sorted: {normal_classes}"
    # Every batch of the training size (16 here) holds several classes.
    assert all(len(set(normal_classes[i : i + 16])) > 1 for i in range(0, 36, 16)), normal_classes
    expected_abnormal = [f"train/automobile/{i:03d}.png" for i in range(3)]
    expected_abnormal += [f"test/automobile/{i:03d}.png" for i in range(4)]
    assert paper.test.ids[36:] == expected_abnormal
    # The same order when the paper protocol is scored beside an honest run; seeded by split_seed.
    honest = prepare_data(_data_config(tmp_path, **values))
    assert honest.paper_evaluation_set().ids == paper.test.ids
    again = prepare_data(_data_config(tmp_path, **values, **{"data.protocol": "paper"}))
    assert again.test.ids == paper.test.ids
    other = prepare_data(_data_config(tmp_path, **values, **{"data.protocol": "paper", "data.split_seed": 1}))
    assert other.test.ids != paper.test.ids and sorted(other.test.ids) == sorted(paper.test.ids)


def test_cifar_python_batches_keep_their_original_order(tmp_path):
    """As the official code: the normal test images in test_batch's order, then the abnormal
    training images (batch 1 to 5), then the abnormal test images."""
    folder = write_cifar_python(tmp_path / "raw", per_class_batch=2, per_class_test=4)
    values = {"data.dataset": "cifar10", "data.root": str(folder), "data.abnormal_class": "bird"}
    paper = prepare_data(_data_config(tmp_path, **values, **{"data.protocol": "paper"}))
    assert paper.info.original_order is True
    ids_of = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _, batch_labels = read_batch(folder / name)
        ids_of[name] = [(f"{name}:{i:05d}", int(c)) for i, c in enumerate(batch_labels)]
    expected = [i for i, c in ids_of["test_batch"] if c != 2]
    expected += [i for n in [f"data_batch_{k}" for k in range(1, 6)] for i, c in ids_of[n] if c == 2]
    expected += [i for i, c in ids_of["test_batch"] if c == 2]
    assert paper.test.ids == expected
    assert (np.diff(paper.test.class_ids[:36]) < 0).any()  # the file's classes come mixed
    honest = prepare_data(_data_config(tmp_path, **values))
    assert honest.paper_evaluation_set().ids == expected


def test_mnist_idx_and_digits_keep_their_original_order(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for part, n in (("train", 40), ("t10k", 30)):
        labels = rng.permutation(np.arange(n) % 10)
        write_idx(folder / f"{part}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{part}-labels-idx1-ubyte", labels)
    values = {"data.dataset": "mnist", "data.root": str(folder), "data.abnormal_class": "3"}
    paper = prepare_data(_data_config(tmp_path, **values, **{"data.protocol": "paper"}))
    normal = _normal_ids(paper)
    assert normal == sorted(normal) and len(normal) == 27 and all(i.startswith("mnist:test:") for i in normal)
    assert (np.diff(paper.test.class_ids[:27]) < 0).any()  # the file's classes come mixed
    abnormal = paper.test.ids[27:]
    assert abnormal == sorted(i for i in abnormal if ":train:" in i) + sorted(
        i for i in abnormal if ":test:" in i
    )
    assert len(abnormal) == 7

    digits = prepare_data(build_config({"data.protocol": "paper"}).data)
    assert digits.info.original_order is True
    normal = _normal_ids(digits)
    assert normal == sorted(normal)
    assert (np.diff(digits.test.class_ids[: len(normal)]) < 0).any()


def _two_normal_classes(per_class: int = 48) -> LabelledSource:
    """Normal classes that differ in brightness (dark and bright stripes) and an abnormal class,
    stored class after class as class folders are."""
    rng = np.random.default_rng(0)

    def pool(n):
        dark = smooth_images(n, 16, rng) // 3
        bright = 170 + smooth_images(n, 16, rng) // 3
        noise = rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)
        return ImageSet(class_ids=np.repeat(np.arange(3), n), images=np.concatenate([dark, bright, noise]))

    return LabelledSource(
        name="synthetic",
        class_names=["dark", "bright", "noise"],
        train=pool(per_class),
        test=pool(per_class),
        channels=1,
        info=SplitInfo(original_order=False),
    )


def test_pure_class_batches_score_differently_from_mixed_ones():
    """Train-mode BatchNorm normalises each batch: batches of one class (the old class-sorted
    order) and mixed batches (the official order) give different scores for the same images and
    weights, so the order is part of the result. In eval mode the order changes nothing."""
    torch.manual_seed(0)
    model = SkipGANomaly(16, 1, ngf=8, ndf=8, nz=16)
    splits = make_splits(_two_normal_classes(), tiny_config(**{"data.abnormal_class": "noise"}).data)
    pool = splits.pool
    official = official_evaluation_order(pool, original_order=False, seed=0)
    class_sorted = np.argsort(pool.labels, kind="stable")
    assert (pool.class_ids[class_sorted][:96] == np.repeat([0, 1], 48)).all()
    np.testing.assert_array_equal(splits.paper_evaluation_set().images, pool.images[official])

    def scores(order, **kwargs):
        scored = score_tiny(model, pool.subset(order), batch_size=16, **kwargs)
        by_position = {}
        for name in ("score", "latent"):
            by_position[name] = np.empty(len(order))
            by_position[name][order] = getattr(scored, name)
        return by_position

    mixed, pure = scores(official, batchnorm_train=True), scores(class_sorted, batchnorm_train=True)
    normal = pool.labels == 0

    def median_change(name):
        return np.median(np.abs(mixed[name] - pure[name])[normal] / np.abs(pure[name][normal]))

    # The latent term passes through D's BatchNorm layers: about 50% apart here. In the score of
    # an untrained model it is outweighed by the reconstruction term (about 0.4% apart), still
    # far above float noise (1e-6).
    assert median_change("latent") > 0.2, f"latent term: median relative change {median_change('latent'):.4f}"
    assert median_change("score") > 1e-3, f"score: median relative change {median_change('score'):.5f}"
    eval_official, eval_sorted = scores(official), scores(class_sorted)
    # Eval mode: the same scores in another batching (another kernel order): a tolerance.
    assert_close(eval_official["score"], eval_sorted["score"], rtol=1e-5, atol=1e-6, name="eval-mode scores")


def test_one_training_gives_the_honest_and_the_paper_figures(tmp_path):
    source = labelled_source()
    # One thread count: the automatic one follows the machine's load, and the comparisons below are exact.
    values = {"data.abnormal_class": "noise", "train.epochs": 2, "train.threads": 1}
    honest_splits = make_splits(source, tiny_config(**values).data)
    plain, plain_metrics = _fit(tiny_config(**values), honest_splits, tmp_path / "plain")
    both, metrics = _fit(
        tiny_config(**values, **{"eval.paper_each_epoch": True}), honest_splits, tmp_path / "both"
    )
    paper_config = tiny_config(**values, **{"data.protocol": "paper"})
    paper, paper_metrics = _fit(paper_config, make_splits(source, paper_config.data), tmp_path / "paper")

    # Scoring the paper protocol changes nothing in the training: exact, as both trainings run
    # the same code path (scoring in between restores every buffer it touches).
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

"""benchmarks/fidelity.py: it skips cleanly without its inputs, and its converter writes class
folders as CIFAR-10 python batches that our reader reads back image for image, classes mixed."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
from fixture_data import CIFAR_CLASSES, write_class_folders

from skipganomaly.data import prepare_data
from skipganomaly.data.images import load_image
from skipganomaly.specs.config import build_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


def _fidelity():
    spec = importlib.util.spec_from_file_location("fidelity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_cleanly_without_the_official_code_or_the_data(tmp_path, capsys):
    fidelity = _fidelity()
    assert fidelity.main([]) == 0
    assert "skipped: no official checkout" in capsys.readouterr().out
    assert fidelity.main(["--official", str(tmp_path)]) == 0  # a folder without train.py
    assert "skipped: no official checkout" in capsys.readouterr().out
    checkout = tmp_path / "official"
    checkout.mkdir()
    (checkout / "train.py").write_text("")
    assert fidelity.main(["--official", str(checkout), "--data-root", str(tmp_path / "absent")]) == 0
    assert "skipped: no CIFAR-10 data" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    work = ["--work", str(tmp_path / "work"), "--sides", "ours"]
    assert fidelity.main(["--official", str(checkout), "--data-root", str(empty), *work]) == 0
    assert "holds neither cifar-10-batches-py nor train/ and test/" in capsys.readouterr().out


def test_class_folders_become_python_batches_in_a_seeded_mixed_order(tmp_path):
    fidelity = _fidelity()
    counts = {"train": dict.fromkeys(CIFAR_CLASSES, 3), "test": dict.fromkeys(CIFAR_CLASSES, 2)}
    root = write_class_folders(tmp_path / "folders", counts, size=32)
    batches = fidelity.resolve_batches(root, tmp_path / "work", seed=0)
    assert sorted(p.name for p in batches.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )
    # str keys, as the published batches load (what torchvision reads)
    with open(batches / "test_batch", "rb") as handle:
        test = pickle.load(handle, encoding="latin1")
    assert set(test) >= {"data", "labels"} and test["data"].shape == (20, 3072)
    labels = np.asarray(test["labels"])
    assert (np.diff(labels) < 0).any(), f"classes not mixed: {labels}"
    # Image for image: the batch's first test image is the class folder's file of that class.
    first = test["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    candidates = sorted((root / "test" / CIFAR_CLASSES[labels[0]]).iterdir())
    assert any(np.array_equal(first, load_image(str(p), 32, 3)) for p in candidates)
    # Our reader reads the batches, in their order, and the paper protocol keeps it.
    cfg = build_config(
        {
            "data.dataset": "cifar10",
            "data.root": str(batches),
            "data.abnormal_class": "cat",
            "data.protocol": "paper",
            "data.cache_dir": str(tmp_path / "cache"),
        }
    ).data
    splits = prepare_data(cfg)
    assert splits.info.format == "python batches" and splits.info.original_order is True
    normal = splits.test.class_ids[splits.test.labels == 0]
    np.testing.assert_array_equal(normal, labels[labels != 3])
    # Converted once: a second call reuses the batches; another order seed writes other ones.
    stamp = (batches.parent / "converted.json").stat().st_mtime_ns
    assert fidelity.resolve_batches(root, tmp_path / "work", seed=0) == batches
    assert (batches.parent / "converted.json").stat().st_mtime_ns == stamp
    other = fidelity.resolve_batches(root, tmp_path / "work", seed=1)
    with open(other / "test_batch", "rb") as handle:
        assert pickle.load(handle, encoding="latin1")["labels"] != test["labels"]

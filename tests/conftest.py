"""Shared fixtures: tiny configs and synthetic data sets written by the tests themselves."""

from __future__ import annotations

import skipganomaly  # noqa: F401  (first: it sets OpenMP's passive waiting before PyTorch loads)

# isort: split
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from skipganomaly.data.base import ImageSet, LabelledSource, SplitInfo, Splits
from skipganomaly.scoring.engine import ScoredSet, ScoringOptions, score_set
from skipganomaly.specs.config import build_config

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Readers cache decoded data sets; tests (and the CLI subprocesses they start, which inherit
    the environment) use a temporary cache, never the user's ~/.cache/skipganomaly."""
    import os

    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("SKIPGANOMALY_CACHE")
    os.environ["SKIPGANOMALY_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SKIPGANOMALY_CACHE", None)
    else:
        os.environ["SKIPGANOMALY_CACHE"] = previous


def smooth_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Normal images: soft horizontal stripes with a random phase and contrast."""
    rows = np.arange(size, dtype=np.float64)[:, None]
    out = np.empty((n, size, size, 1), np.uint8)
    for i in range(n):
        phase, contrast = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.0)
        stripe = 0.5 + 0.5 * contrast * np.sin(2 * np.pi * rows / size * 2 + phase)
        out[i, :, :, 0] = np.clip(np.repeat(stripe, size, axis=1) * 255, 0, 255).astype(np.uint8)
    return out


def anomalous_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Obvious anomalies: the stripes overlaid with a bright square of salt-and-pepper noise."""
    out = smooth_images(n, size, rng)
    for i in range(n):
        half = size // 2
        y, x = rng.integers(0, size - half, 2)
        out[i, y : y + half, x : x + half, 0] = rng.choice([0, 255], size=(half, half))
    return out


def vertical_stripes(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Anomalies with the normal images' pixel statistics: the same stripes turned by 90 degrees.
    Unlike the noise squares, an untrained network does not tell them apart (AUROC about 0.5);
    only a model that learned what normal looks like does."""
    return np.ascontiguousarray(smooth_images(n, size, rng).transpose(0, 2, 1, 3))


ANOMALIES = {"noise": anomalous_images, "vertical": vertical_stripes}


def synthetic_splits(
    size: int = 16,
    n_train: int = 160,
    n_eval: int = 40,
    seed: int = 0,
    protocol: str = "val-split",
    anomaly: str = "noise",
) -> Splits:
    rng = np.random.default_rng(seed)
    make_anomalies = ANOMALIES[anomaly]

    def labelled(n_normal: int, n_abnormal: int) -> ImageSet:
        images = np.concatenate([smooth_images(n_normal, size, rng), make_anomalies(n_abnormal, size, rng)])
        labels = np.r_[np.zeros(n_normal, np.int64), np.ones(n_abnormal, np.int64)]
        return ImageSet(class_ids=labels.copy(), images=images, labels=labels)

    train = ImageSet(
        class_ids=np.zeros(n_train, np.int64),
        images=smooth_images(n_train, size, rng),
        labels=np.zeros(n_train, np.int64),
    )
    info = SplitInfo(
        dataset="synthetic",
        class_names=["stripes", "noise"],
        setting="synthetic",
        normal_classes=["stripes"],
        abnormal_classes=["noise"],
    )
    return Splits(
        train=train,
        val=labelled(n_eval, n_eval),
        test=labelled(n_eval, n_eval),
        protocol=protocol,
        channels=1,
        info=info,
    )


def labelled_source(size: int = 16, per_class: int = 60, seed: int = 0) -> LabelledSource:
    """Three classes: horizontal stripes, vertical stripes, and stripes with a noise square."""
    rng = np.random.default_rng(seed)

    def pool(n):
        images = np.concatenate(
            [
                smooth_images(n, size, rng),
                smooth_images(n, size, rng).transpose(0, 2, 1, 3),
                anomalous_images(n, size, rng),
            ]
        )
        return ImageSet(class_ids=np.repeat(np.arange(3), n), images=images)

    return LabelledSource(
        name="synthetic",
        class_names=["horizontal", "vertical", "noise"],
        train=pool(per_class),
        test=pool(per_class // 3),
        channels=1,
        default_abnormal_class="noise",
    )


def tiny_config(**overrides):
    # The faithful model: most tests are about the machinery the presets share; the improved
    # default preset has its own tests (test_improved.py).
    values = {
        "train.preset": "reference",
        "data.image_size": 16,
        "data.batch_size": 16,
        "data.eval_batch_size": 32,
        "model.ngf": 8,
        "model.ndf": 8,
        "model.nz": 16,
        "train.epochs": 2,
        "train.device": "cpu",
        "train.log_every": 1,
    }
    values.update(overrides)
    return build_config(values)


@pytest.fixture
def splits() -> Splits:
    return synthetic_splits()


@pytest.fixture
def image_folder(tmp_path):
    """A folder of PNG files: normal stripes, obvious anomalies, one RGBA and one 16-bit image."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    (folder / "normal").mkdir(parents=True)
    (folder / "abnormal").mkdir()
    for i, image in enumerate(smooth_images(4, 16, rng)):
        Image.fromarray(image[:, :, 0]).save(folder / "normal" / f"n{i}.png")
    for i, image in enumerate(anomalous_images(4, 16, rng)):
        Image.fromarray(image[:, :, 0]).save(folder / "abnormal" / f"a{i}.png")
    rgba = np.dstack([smooth_images(1, 24, rng)[0, :, :, 0]] * 3 + [np.full((24, 24), 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "normal" / "rgba.png")
    sixteen = smooth_images(1, 20, rng)[0, :, :, 0].astype(np.uint16) * 257
    Image.fromarray(sixteen).save(folder / "normal" / "sixteen.png")
    return folder


def score_tiny(model, image_set: ImageSet, batch_size: int, pixel_sample: int = 0, **options) -> ScoredSet:
    """Score a set of the tests' 16 px grayscale images on the CPU (``ScoringOptions`` such as
    ``batchnorm_train`` or ``details`` pass through)."""
    options = ScoringOptions(
        image_size=16, channels=1, batch_size=batch_size, device=torch.device("cpu"), **options
    )
    return score_set(model, image_set, options, pixel_sample)


# --------------------------------------------------------------------------- the command line
# Options that make a CLI training tiny (16 px, narrow networks, no progress bars).
TINY_CLI = [
    "--image-size",
    "16",
    "--set",
    "model.ngf=8",
    "--set",
    "model.ndf=8",
    "--set",
    "model.nz=16",
    "--quiet",
]


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m skipganomaly ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "skipganomaly", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


# --------------------------------------------------------------------------- deployment
@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A tiny trained digits run (digit 0 abnormal), shared by the deployment tests."""
    from deploy_helpers import train_digits_run

    return train_digits_run(tmp_path_factory.mktemp("digits") / "run")


@pytest.fixture(scope="session")
def digits_onnx(digits_run, tmp_path_factory):
    """The run's ONNX export (skipganomaly export), written once."""
    from skipganomaly.deploy.export import export_run

    return export_run(digits_run, output=tmp_path_factory.mktemp("export") / "model.onnx").path


class Interrupt(Exception):
    """Raised by :func:`train_killed_then_resumed`'s callback: a kill at the end of an epoch."""


def train_killed_then_resumed(config, splits, folder, stop_after: int = 2):
    """Train into ``folder``, stopped at the end of epoch ``stop_after`` (as a kill would leave
    it), then resume from its ``last`` checkpoint to the end; returns (the cut trainer, the
    resumed one). What every resume-exactness test does."""
    from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
    from skipganomaly.training.trainer import Trainer

    cut = Trainer(config, splits, folder, log=lambda s: None, progress=False)

    def stop(trainer, epoch):
        if epoch == stop_after:
            raise Interrupt

    cut.callbacks.append(stop)
    with pytest.raises(Interrupt):
        cut.fit()
    resumed = Trainer(config, splits, folder, log=lambda s: None, progress=False)
    resumed.restore(load_checkpoint(checkpoint_path(folder, "last")))
    resumed.fit()
    return cut, resumed

import json

import numpy as np
import pytest
import torch
from conftest import score_tiny, synthetic_splits, tiny_config

from skipganomaly.evaluation.record import METRIC_SECTIONS, EvaluationInputs, build_metrics
from skipganomaly.formats.checkpoint import Selection, checkpoint_path, load_checkpoint
from skipganomaly.scoring.engine import ScoredSet, ScoringOptions
from skipganomaly.scoring.metrics import auroc
from skipganomaly.scoring.normalization import ScoreNormalization
from skipganomaly.training.trainer import Trainer, lr_factor


class Interrupt(Exception):
    pass


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_lr_factor_linear_decay():
    factors = [lr_factor(e, 4, "linear", 0.5) for e in range(4)]
    assert factors == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
    assert [lr_factor(e, 3, "none", 0.5) for e in range(3)] == [1.0, 1.0, 1.0]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, splits):
    # Bit-for-bit equality needs one thread count: the automatic one follows the machine's load.
    config = tiny_config(**{"train.epochs": 3, "train.input_noise_std": 0.05, "train.threads": 2})
    full = Trainer(config, splits, tmp_path / "full", log=lambda s: None, progress=False)
    full.fit()

    interrupted = Trainer(config, splits, tmp_path / "cut", log=lambda s: None, progress=False)

    def stop_after_two(trainer, epoch):
        if epoch == 2:
            raise Interrupt

    interrupted.callbacks.append(stop_after_two)
    with pytest.raises(Interrupt):
        interrupted.fit()
    assert not (tmp_path / "cut" / "metrics.json").exists()

    resumed = Trainer(config, splits, tmp_path / "cut", log=lambda s: None, progress=False)
    torch.manual_seed(12345)  # whatever the RNG holds now must not matter: the checkpoint restores it
    resumed.restore(load_checkpoint(checkpoint_path(tmp_path / "cut", "last")))
    assert resumed.start_epoch == 2
    metrics = resumed.fit()

    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    # Exact: the resumed run repeats the uninterrupted one's code path (same process, threads
    # and batches), so any difference at all would be a resumption bug.
    for key in a:
        assert torch.equal(a[key], b[key]), key
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["test"]["auroc"] == pytest.approx(full_metrics["test"]["auroc"])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_same_seed_same_weights_other_seed_differs(tmp_path, splits):
    config = tiny_config(**{"train.epochs": 1, "train.threads": 2})  # one thread count: bit-for-bit
    runs = [Trainer(config, splits, tmp_path / f"r{i}", log=lambda s: None, progress=False) for i in range(2)]
    for run in runs:
        run.fit()
    other = Trainer(
        tiny_config(**{"train.epochs": 1, "train.seed": 1, "train.threads": 2}),
        splits,
        tmp_path / "r2",
        log=lambda s: None,
        progress=False,
    )
    other.fit()
    a, b, c = (_weights(r) for r in (*runs, other))
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: one code path run twice (determinism)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_is_self_describing_and_safe(tmp_path, splits):
    trainer = Trainer(tiny_config(), splits, tmp_path / "run", log=lambda s: None, progress=False)
    metrics = trainer.fit()
    for which in ("best", "last"):
        payload = torch.load(checkpoint_path(tmp_path / "run", which), weights_only=True)
        assert payload["model"] == {
            "name": "skipganomaly",
            "args": {"image_size": 16, "channels": 1, "ngf": 8, "ndf": 8, "nz": 16},
        }
        assert payload["config"]["train"]["epochs"] == 2
        assert set(payload["optimizers"]) == {"generator", "discriminator"}
        assert isinstance(payload["rng"]["torch"], torch.Tensor)
        assert {"low", "high", "threshold", "map_high"} <= set(payload["normalization"])
        assert payload["package_version"]
    best = load_checkpoint(checkpoint_path(tmp_path / "run", "best"))
    assert best.epoch == metrics["epoch_best"]
    for name in ("config.yaml", "metrics.json", "scores.csv", "log.jsonl"):
        assert (tmp_path / "run" / name).exists()
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and events.count("epoch") == 2 and "step" in events


def test_discriminator_reinitialised_when_its_loss_collapses(tmp_path, splits):
    # A threshold above any real loss forces the re-initialisation path on every step.
    config = tiny_config(**{"train.epochs": 1, "train.d_reinit_threshold": 100.0})
    messages = []
    trainer = Trainer(config, splits, tmp_path / "run", log=messages.append, progress=False)
    metrics = trainer.fit()
    steps = len(splits.train) // 16
    assert metrics["history"][0]["losses"]["d_reinits"] == steps
    assert any("re-initialised D" in m for m in messages)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert log.count('"d_reinit"') == steps


def test_short_training_separates_obvious_anomalies(tmp_path):
    splits = synthetic_splits(size=16, n_train=256, n_eval=64, seed=3)
    config = tiny_config(**{"train.epochs": 4, "model.ngf": 16, "model.ndf": 16})
    metrics = Trainer(config, splits, tmp_path / "run", log=lambda s: None, progress=False).fit()
    assert metrics["test"]["auroc"] >= 0.9, metrics["history"]
    assert metrics["protocol"] == "val-split"
    # The stored threshold, chosen on validation, also works on test.
    assert metrics["test"]["f1"] >= 0.7
    assert np.isfinite(metrics["normalization"]["map_high"])


def test_training_learns_what_normal_looks_like(tmp_path):
    """Anomalies with the normal images' pixel statistics (the stripes turned by 90 degrees): an
    untrained model cannot tell them apart, so a high AUROC after training shows learning, not a
    trivially separable task."""
    splits = synthetic_splits(size=16, n_train=256, n_eval=64, seed=5, anomaly="vertical")
    # The paper preset's lr 2e-3 learns this in 2 epochs; the reference preset needs about 6.
    config = tiny_config(**{"train.epochs": 4, "model.ngf": 16, "model.ndf": 16, "train.preset": "paper"})
    trainer = Trainer(config, splits, tmp_path / "run", log=lambda s: None, progress=False)
    scored = score_tiny(trainer.model, splits.test, batch_size=32)
    before = auroc(scored.labels, scored.score)
    metrics = trainer.fit()
    assert before < 0.7, before
    assert metrics["test"]["auroc"] >= 0.95, metrics["history"]


def test_metrics_json_is_assembled_from_sections():
    """metrics.json is the sections' keys in order; a new section adds its own keys and merges
    into val and test, and a section that needs the model (pixel AUROC) builds it only when used."""
    splits = synthetic_splits(n_train=4, n_eval=4)
    labels = splits.test.labels
    scores = labels + 0.01 * np.arange(len(labels))
    scored = ScoredSet(
        score=scores, reconstruction=scores, latent=scores, labels=labels, indices=np.arange(len(labels))
    )
    history = [{"epoch": 1, "test": {"auroc": 0.5}}, {"epoch": 2, "test": {"auroc": 1.0}}]
    inputs = EvaluationInputs(
        config=tiny_config(),
        splits=splits,
        val=scored,
        test=scored,
        normalization=ScoreNormalization(low=0.0, high=1.0, threshold=0.5),
        best=Selection(epoch=2, metric="val.auroc", value=1.0),
        history=history,
        model=lambda: pytest.fail("no section needed the model: the splits have no masks"),
        options=ScoringOptions(image_size=16, channels=1, batch_size=8, device=torch.device("cpu")),
    )
    metrics = build_metrics(inputs)
    assert list(metrics)[:3] == ["protocol", "protocol_note", "model"]
    assert (metrics["protocol"], metrics["epoch_best"], metrics["selection"]) == ("val-split", 2, "val.auroc")
    assert metrics["val"]["auroc"] == metrics["test"]["auroc"] == 1.0
    assert metrics["test"]["threshold"] == 0.5 and metrics["test"]["f1"] == 1.0
    assert metrics["paper_style"]["epoch"] == 2 and metrics["paper_protocol"] is None
    assert "pixel_auroc" not in metrics["test"]

    def extra_section(e):
        return {"test": {"extra_statistic_auroc": 0.5}, "extra_check": {"warning": None}}

    extended = build_metrics(inputs, (*METRIC_SECTIONS, extra_section))
    assert extended["test"]["extra_statistic_auroc"] == 0.5 and extended["test"]["auroc"] == 1.0
    assert extended["extra_check"] == {"warning": None} and list(extended)[:-1] == list(metrics)

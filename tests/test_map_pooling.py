"""R's pooling over the anomaly map (``model.map_pooling``): the refusals, a model that stays what
it was without candidates, R at every candidate, the choice against hand-made scores, and a run
that chooses on its synthetic validation, keeps the choice in its checkpoint and scores with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import synthetic_splits, tiny_config

from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.objective import pooled_reconstruction_score
from skipganomaly.scoring.decisions import choose_pooling, standardize_terms, with_pooling
from skipganomaly.scoring.engine import ScoredSet, ScoringOptions, score_set
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.specs.models import parse_map_pooling
from skipganomaly.training.trainer import Trainer


@pytest.mark.parametrize("text", ["0", "1.5", "1,x", "0.1,0.1", "nan"])
def test_map_pooling_refuses_what_is_not_a_list_of_fractions(text):
    with pytest.raises(UserError, match="map_pooling"):
        build_config({"model.map_pooling": text})
    assert parse_map_pooling("1, 0.01") == (1.0, 0.01)
    assert parse_map_pooling(0.25) == (0.25,)  # a number, as older configurations give it


def test_one_pooling_keeps_the_model_as_it_was_and_candidates_add_a_buffer():
    plain = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent")
    old_style = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent", map_pooling=1.0)
    fixed = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent", map_pooling="0.25")
    chooser = SkipGANomaly(16, 3, 8, 8, 16, score_terms="reconstruction,latent", map_pooling="1,0.05")
    for model in (plain, old_style):
        assert "map_pooling" not in model.args and "map_pooling" not in model.state_dict()
    assert fixed.args["map_pooling"] == "0.25" and "map_pooling" not in fixed.state_dict()
    assert float(chooser.map_pooling) == 1.0 and "map_pooling" in chooser.state_dict()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    for model in (plain, fixed, chooser):
        model.eval()
        chooser.load_state_dict(plain.state_dict(), strict=False)
        fixed.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        x_hat = plain.generator(x)
        out = chooser.score(x)
        assert plain.score(x).pooled_reconstruction is None
        # R at each candidate, in order, the first until validation chooses.
        assert out.pooled_reconstruction.shape == (4, 2)
        torch.testing.assert_close(out.pooled_reconstruction[:, 0], (x - x_hat).abs().flatten(1).mean(1))
        torch.testing.assert_close(
            out.pooled_reconstruction[:, 1], pooled_reconstruction_score(x, x_hat, 0.05)
        )
        torch.testing.assert_close(out.reconstruction, out.pooled_reconstruction[:, 0])
        chooser.set_map_pooling(0.05)
        torch.testing.assert_close(chooser.score(x).reconstruction, out.pooled_reconstruction[:, 1])
        torch.testing.assert_close(fixed.score(x).reconstruction, pooled_reconstruction_score(x, x_hat, 0.25))
    # The top 5% of 256 pixels: 13 of them.
    pixels = (x - x_hat).abs().mean(1).flatten(1)
    expected = pixels.sort(1, descending=True).values[:, :13].mean(1)
    torch.testing.assert_close(out.pooled_reconstruction[:, 1], expected)


def scored(labels, pooled, other, groups=None):
    pooled = np.asarray(pooled, dtype=float)
    return ScoredSet(
        score=np.zeros(len(labels)), reconstruction=pooled[:, 0], latent=np.zeros(len(labels)),
        labels=np.asarray(labels), indices=np.arange(len(labels)),
        terms={"reconstruction": pooled[:, 0], "latent": np.asarray(other, dtype=float)},
        groups=None if groups is None else np.asarray(groups), pooled_reconstruction=pooled,
    )  # fmt: skip


def test_choose_pooling_against_hand_made_scores():
    # Validation normals, then anomalies of two families; the second candidate separates both
    # families, the first only family "a"; the other term is noise shared by both.
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    groups = ["", "", "", "", "a", "a", "b", "b"]
    pooled = [[1, 1], [2, 2], [3, 3], [4, 4], [9, 9], [8, 8], [0.5, 7], [1.5, 6]]
    other = [0.1, -0.1, 0.2, -0.2, 0.0, 0.0, 0.0, 0.0]
    judge = scored(labels, pooled, other, groups)
    val = scored(labels[:4], pooled[:4], other[:4])
    index, figures = choose_pooling(judge, val, choose_subset=False)
    assert index == 1
    # By hand: family b against the normals, first candidate: R z-scores of b (-1.79, -1.06)
    # sit below every normal but the lowest, and the latent term is 0 for both.
    mean = np.array([2.5, 0.0])
    std = np.array([np.std([1, 2, 3, 4]), np.std([0.1, -0.1, 0.2, -0.2])])
    first = standardize_terms(with_pooling(judge, 0), mean, std)
    b = first[6:]
    normal = first[:4]
    expected = np.mean([[float(s > n) + 0.5 * float(s == n) for n in normal] for s in b])
    assert figures[0] == pytest.approx(expected), (figures, expected)
    assert figures[1] == pytest.approx(1.0)
    # A tie keeps the first candidate; so does a figure that cannot be computed.
    tied = scored(labels, [[p[1], p[1]] for p in pooled], other, groups)
    assert choose_pooling(tied, val, choose_subset=False)[0] == 0
    normal_only = scored(labels[:4], pooled[:4], other[:4])
    index, figures = choose_pooling(normal_only, val, choose_subset=True)
    assert index == 0 and all(math.isnan(f) for f in figures)


def test_normal_only_run_chooses_the_pooling_on_its_synthetic_validation(tmp_path):
    splits = synthetic_splits(n_train=48, n_eval=16, protocol="normal-only")
    splits.val = splits.train.subset(np.arange(32, 48))
    splits.train = splits.train.subset(np.arange(32))
    config = tiny_config(
        **{"train.preset": "restoring", "train.ema_decay": 0.9, "model.knn_bank": 32,
           "eval.synthetic_images": 16, "train.epochs": 2, "train.threads": 1,
           "data.protocol": "normal-only", "model.map_pooling": "1,0.02"}
    )  # fmt: skip
    lines: list[str] = []
    run = tmp_path / "run"
    metrics = Trainer(config, splits, run, log=lines.append, progress=False).fit()
    for record in metrics["history"]:
        choice = record["pooling_choice"]
        assert choice["on"] == "synthetic validation" and set(choice["figures"]) == {"1", "0.02"}
        best = max(choice["figures"], key=lambda k: (choice["figures"][k], k == "1"))
        assert choice["map_pooling"] == float(best), choice
        # The epoch is chosen on the synthetic figure of the chosen pooling.
        assert record["synthetic_val"]["auroc"] == pytest.approx(choice["figures"][best])
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert all(" R mean" in line or " R top 2%" in line for line in epoch_lines), epoch_lines
    checkpoint = load_checkpoint(checkpoint_path(run, "best"))
    selected = next(r for r in metrics["history"] if r["epoch"] == checkpoint.epoch)
    model = checkpoint.build_model().eval()
    assert model.pooling_fraction() == selected["pooling_choice"]["map_pooling"]
    # The checkpoint alone scores test as the run did: R at the chosen pooling.
    options = ScoringOptions.for_run(config, splits.channels, torch.device("cpu"), None)
    rescored = score_set(model, splits.test, options)
    index = [1.0, 0.02].index(selected["pooling_choice"]["map_pooling"])
    np.testing.assert_allclose(rescored.reconstruction, rescored.pooled_reconstruction[:, index], rtol=1e-6)
    from skipganomaly.scoring.metrics import auroc

    assert auroc(rescored.labels, rescored.score) == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    # The export scores with the chosen pooling too, and says which.
    from skipganomaly.deploy.detector import Detector
    from skipganomaly.deploy.run_exports import exported_for_run

    assert exported_for_run(run, "best").metadata["map_pooling"] == selected["pooling_choice"]["map_pooling"]
    detector = Detector.from_run(run)
    onnx_raw = detector.engine.run(splits.test.images[:4])["raw_score"]
    np.testing.assert_allclose(onnx_raw, rescored.score[:4], rtol=1e-3, atol=1e-3)


def test_val_split_run_chooses_the_pooling_on_labelled_validation(tmp_path):
    config = tiny_config(**{"train.preset": "improved", "model.knn_bank": 32, "model.map_pooling": "1,0.05"})
    metrics = Trainer(config, synthetic_splits(), tmp_path, log=lambda s: None, progress=False).fit()
    choice = metrics["history"][0]["pooling_choice"]
    assert choice["on"] == "labelled validation" and set(choice["figures"]) == {"1", "0.05"}
    # The figure of the chosen pooling is the epoch's validation AUROC (its terms chosen alike).
    assert metrics["history"][0]["val"]["auroc"] == pytest.approx(
        choice["figures"][f"{choice['map_pooling']:g}"]
    )

"""The improved recipe's switches (docs/accuracy.md): each is off in the faithful presets, changes
what it claims to change, and survives a checkpoint and a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_splits, tiny_config, train_killed_then_resumed

from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.objective import (
    LossWeights,
    pooled_reconstruction_score,
    quarter_turns,
    reconstruction_score,
    rotations,
)
from skipganomaly.models.score_terms import nearest_neighbour_distance, standardized_score
from skipganomaly.scoring.metrics import auroc
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.specs.models import MODEL_SPECS
from skipganomaly.specs.score_terms import parse_score_terms
from skipganomaly.training.ema import WeightAverage, batchnorm_buffers
from skipganomaly.training.trainer import Trainer

SWITCHES = {
    "train.ema_decay": 0.0,
    "train.w_rot": 0.0,
    "train.augment_flip": False,
    "model.rotation_head": False,
    "model.score_terms": "",
    "model.map_pooling": "1",
}


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_faithful_presets_leave_every_switch_off(preset):
    config = build_config({"train.preset": preset})
    for key, off in SWITCHES.items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == off, key
    model = SkipGANomaly(image_size=16, channels=1, ngf=8, ndf=8, nz=16)
    assert set(model.args) == {"image_size", "channels", "ngf", "ndf", "nz"}  # checkpoints unchanged
    assert model.discriminator.rotation is None
    assert not any("feature_bank" in name or "term_" in name for name, _ in model.named_buffers())


def test_pooled_reconstruction_is_the_mean_of_the_highest_pixels():
    x = torch.zeros(1, 1, 4, 4)
    x_hat = torch.zeros(1, 1, 4, 4)
    x_hat[0, 0, 0, :2] = torch.tensor([1.0, 0.5])  # a two-pixel defect in 16 pixels
    assert pooled_reconstruction_score(x, x_hat, 1.0).item() == pytest.approx(1.5 / 16)
    assert pooled_reconstruction_score(x, x_hat, 1.0) == reconstruction_score(x, x_hat)
    assert pooled_reconstruction_score(x, x_hat, 2 / 16).item() == pytest.approx(0.75)
    assert pooled_reconstruction_score(x, x_hat, 1 / 16).item() == pytest.approx(1.0)


def test_nearest_neighbour_distance_by_hand():
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    one = nearest_neighbour_distance(features, bank, k=1)
    two = nearest_neighbour_distance(features, bank, k=2)
    assert one.tolist() == pytest.approx([0.0, 3.0])
    assert two.tolist() == pytest.approx([(0.0 + 5.0) / 2, (3.0 + 4.0) / 2])


def test_standardized_score_by_hand():
    terms = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([10.0, 30.0])}
    score = standardized_score(terms, ("a", "b"), torch.tensor([1.0, 10.0]), torch.tensor([2.0, 10.0]))
    assert score.tolist() == pytest.approx([0.0, 1.0 + 2.0])


def test_rotations_turn_each_image_its_own_number_of_quarter_turns():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    turned = rotations(x, torch.tensor([0, 3]))
    assert torch.equal(turned[0], x[0])
    assert torch.equal(turned[1], torch.rot90(x[1], 3, dims=(1, 2)))


def test_score_terms_are_checked():
    assert parse_score_terms("reconstruction, knn") == ("reconstruction", "knn")
    with pytest.raises(UserError, match="'pixels' is unknown"):
        parse_score_terms("reconstruction,pixels")
    with pytest.raises(UserError, match="needs model.rotation_head"):
        build_config({"train.preset": "reference", "model.score_terms": "rotation"})
    with pytest.raises(UserError, match="train.w_rot"):
        build_config({"train.preset": "reference", "train.w_rot": 1.0})
    with pytest.raises(UserError, match="map_pooling"):
        build_config({"model.map_pooling": 0.0})
    with pytest.raises(UserError, match="ema_decay"):
        build_config({"train.ema_decay": 1.0})
    with pytest.raises(UserError, match="applies to skipganomaly only"):
        build_config({"model.name": "ganomaly", "model.score_terms": "knn"})


def test_rotation_head_trains_only_the_discriminator_and_gets_gradients():
    torch.manual_seed(0)
    model = SkipGANomaly(image_size=16, channels=1, ngf=8, ndf=8, nz=16, rotation_head=True)
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    losses = model.training_losses(x, LossWeights(rotation=1.0))
    assert "d_rot" in losses.parts and losses.parts["d_rot"] > 0
    head = list(model.discriminator.rotation.parameters())
    grads = torch.autograd.grad(losses.discriminator, head, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # the generator's loss does not depend on the head
    assert all(g is None for g in torch.autograd.grad(losses.generator, head, allow_unused=True))
    without = model.training_losses(x, LossWeights(rotation=0.0))
    assert "d_rot" not in without.parts


def test_weight_average_follows_the_weights_with_warm_up():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    average.update(model)  # first decay min(0.9, 2/11)
    d = 2 / 11
    expected = d * start + (1 - d) * (start + 1)
    assert torch.allclose(average.model[0].weight, expected)
    assert torch.allclose(average.model[1].running_mean, torch.full((2,), (1 - d) * 2.0))
    assert [n for n, _ in batchnorm_buffers(model)] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert not any(p.requires_grad for p in average.model.parameters())


IMPROVED = {
    "train.ema_decay": 0.9,
    "model.rotation_head": True,
    "train.w_rot": 1.0,
    "model.score_terms": "reconstruction,latent,knn,rotation",
    "model.map_pooling": 0.25,
    "model.knn_bank": 64,
    "model.knn_k": 3,
    "train.augment_flip": True,
}


def test_improved_run_scores_with_its_averaged_weights_and_fitted_terms(tmp_path):
    splits = synthetic_splits(n_train=80, n_eval=20)
    trainer = Trainer(tiny_config(**IMPROVED), splits, tmp_path, log=lambda s: None, progress=False)
    metrics = trainer.fit()
    best = load_checkpoint(checkpoint_path(tmp_path, "best"))
    assert best.ema_state_dict is not None and best.ema_updates > 0
    live, averaged = best.state_dict, best.ema_state_dict
    name = "generator.down.0.weight"
    assert not torch.equal(live[name], averaged[name])  # two sets of weights are kept
    model = best.build_model().eval()  # scores with the averaged weights and the fitted terms
    assert torch.equal(model.state_dict()[name], averaged[name])
    assert model.feature_bank.shape == (64, 16) and model.feature_bank.abs().sum() > 0
    assert not torch.equal(model.term_std, torch.ones(4))
    # validation chose the terms summed (val-split has labelled anomalies): 1 or 0 each, logged
    chosen = [t for t, w in zip(model.score_terms, model.term_weights.tolist(), strict=True) if w == 1.0]
    assert set(model.term_weights.tolist()) <= {0.0, 1.0} and chosen
    assert metrics["history"][metrics["epoch_best"] - 1]["score_terms"] == chosen
    # the stored model alone reproduces the run's scores (bank and statistics are in its weights)
    x = torch.from_numpy(splits.test.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    with torch.no_grad():
        scores = model.score(x).score.numpy()
    assert auroc(splits.test.labels, scores) == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    # the standardised terms of normal validation images are centred by construction
    with torch.no_grad():
        xv = torch.from_numpy(splits.val.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        out = model.score(xv)
    normal = splits.val.labels == 0
    for i, term in enumerate(model.score_terms):
        z = (out.terms[term][normal] - model.term_mean[i]) / model.term_std[i]
        assert abs(float(z.mean())) < 1e-3, (term, float(z.mean()))


def test_averaged_weights_resume_exactly(tmp_path):
    splits = synthetic_splits(n_train=64, n_eval=16)
    # A fixed thread count: the automatic one follows the machine's load, and another count sums
    # in another order (docs/usage.md).
    config = tiny_config(**IMPROVED, **{"train.epochs": 3, "train.threads": 1})
    straight = Trainer(config, splits, tmp_path / "a", log=lambda s: None, progress=False)
    straight.fit()

    train_killed_then_resumed(config, splits, tmp_path / "b")
    a = load_checkpoint(checkpoint_path(tmp_path / "a", "last"))
    b = load_checkpoint(checkpoint_path(tmp_path / "b", "last"))
    assert a.ema_updates == b.ema_updates > 0
    for key in a.ema_state_dict:  # the same code path twice: bit-equal
        assert torch.equal(a.ema_state_dict[key], b.ema_state_dict[key]), key


def test_flip_augmentation_mirrors_about_half_of_a_batch():
    from skipganomaly.data.loading import random_horizontal_flip

    torch.manual_seed(0)
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    out = random_horizontal_flip(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 70 < int(flipped.sum()) < 130


def test_knn_bank_never_exceeds_the_training_set(tmp_path):
    splits = synthetic_splits(n_train=40, n_eval=10)
    config = tiny_config(**{**IMPROVED, "model.knn_bank": 4096, "train.epochs": 1})
    trainer = Trainer(config, splits, tmp_path, log=lambda s: None, progress=False)
    assert trainer.scoring_model.feature_bank.shape[0] == 40
    assert np.unique(trainer.validation.bank_images.class_ids).size >= 1


def test_improved_is_the_default_preset_of_skipganomaly_only():
    assert "improved" in MODEL_SPECS["skipganomaly"].presets
    config = build_config({})
    assert config.train.preset == "improved" and config.model.rotation_head and config.train.ema_decay > 0
    for name in ("ganomaly", "egbad", "anogan"):
        assert build_config({"model.name": name}).train.preset == "reference"


def test_quarter_turns_are_rot90():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    for k in range(5):
        assert torch.equal(quarter_turns(x, k), torch.rot90(x, k, dims=(2, 3))), f"k={k}"


def test_choose_terms_drops_a_term_that_points_the_wrong_way():
    """Validation keeps the subset of terms with the best AUROC: a term that is lower for the
    anomalies (reconstruction of simple anomalous images) is left out; without labelled anomalies
    every term counts."""
    from skipganomaly.scoring.decisions import choose_terms, fit_term_statistics, standardize_terms
    from skipganomaly.scoring.engine import ScoredSet
    from skipganomaly.scoring.metrics import auroc

    rng = np.random.default_rng(0)
    labels = np.array([0] * 200 + [1] * 100)
    good = rng.normal(size=300) + 1.5 * labels  # higher for anomalies
    inverted = rng.normal(size=300) - 2.0 * labels  # lower for anomalies
    noise = rng.normal(size=300)
    blank = {
        "score": np.zeros(300),
        "reconstruction": np.zeros(300),
        "latent": np.zeros(300),
        "indices": np.arange(300),
    }
    val = ScoredSet(labels=labels, terms={"a": good, "b": inverted, "c": noise}, **blank)
    mean, std = fit_term_statistics(val)
    weights = choose_terms(val, mean, std)
    assert weights.tolist() == [1.0, 0.0, 0.0], weights
    everything = auroc(labels, standardize_terms(val, mean, std))
    chosen = auroc(labels, standardize_terms(val, mean, std, weights))
    assert chosen > 0.8 > 0.5 > everything, (chosen, everything)
    normal_only = ScoredSet(labels=np.zeros(300, dtype=int), terms=val.terms, **blank)
    assert choose_terms(normal_only, mean, std).tolist() == [1.0, 1.0, 1.0]

"""Honest evaluation: an image's score depends on nothing but the image and the model."""

import numpy as np
import torch
from conftest import score_tiny
from numerics import assert_close

from skipganomaly.data.base import ImageSet
from skipganomaly.data.loading import iterate_batches, to_model_input
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.objective import LossWeights


def _trained_model(splits):
    """A model whose BatchNorm running statistics have moved away from their defaults."""
    torch.manual_seed(0)
    model = SkipGANomaly(16, 1, ngf=8, ndf=8, nz=16)
    groups = model.parameter_groups()
    opt = torch.optim.Adam(groups["generator"], lr=1e-3)
    model.train()
    for batch in iterate_batches(splits.train, 16, image_size=16, channels=1):
        losses = model.training_losses(to_model_input(batch.images), LossWeights())
        opt.zero_grad()
        losses.generator.backward(inputs=groups["generator"])
        opt.step()
    return model


def test_scores_do_not_depend_on_batch_or_order(splits):
    model = _trained_model(splits)
    test = splits.test
    reference = score_tiny(model, test, batch_size=80).score
    by_sevens = score_tiny(model, test, batch_size=7).score
    singles = score_tiny(model, test, batch_size=1).score
    # Other batch sizes may take other kernels (another order of the same sums): a tolerance.
    assert_close(by_sevens, reference, rtol=1e-5, atol=1e-6, name="scores in batches of 7")
    assert_close(singles, reference, rtol=1e-5, atol=1e-6, name="scores one by one")

    order = np.random.default_rng(0).permutation(len(test))
    shuffled = score_tiny(model, test.subset(order), batch_size=13).score
    assert_close(shuffled, reference[order], rtol=1e-5, atol=1e-6, name="shuffled scores")

    # A normal image scores the same whether its batch mates are normal or abnormal.
    normal_first = test.subset(np.flatnonzero(test.labels == 0)[:1])
    alone = score_tiny(model, normal_first, batch_size=1).score[0]
    among_anomalies = ImageSet.concatenate([normal_first, test.subset(np.flatnonzero(test.labels == 1)[:15])])
    assert_close(score_tiny(model, among_anomalies, batch_size=16).score[0], alone, rtol=1e-5, atol=1e-6)


def test_train_mode_batchnorm_leaks_and_is_restored(splits):
    """The official code's scoring (train-mode BatchNorm) makes scores depend on the batch;
    our paper protocol reproduces that, and leaves the model's buffers untouched."""
    model = _trained_model(splits).eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    test = splits.test
    leaky_big = score_tiny(model, test, batch_size=80, batchnorm_train=True).score
    leaky_small = score_tiny(model, test, batch_size=5, batchnorm_train=True).score
    assert np.abs(leaky_big - leaky_small).max() > 1e-3
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert not model.training  # back in the mode it was in


def test_details_and_pixel_sample(splits):
    model = _trained_model(splits)
    scored = score_tiny(model, splits.val, batch_size=32, details=True, pixel_sample=10)
    n = len(splits.val)
    assert scored.anomaly_maps.shape == (n, 16, 16)
    assert scored.reconstructed.shape == (n, 1, 16, 16)
    assert scored.features.shape == (n, 16)
    assert scored.pixel_errors.shape == (10 * int((splits.val.labels == 0).sum()),)
    np.testing.assert_allclose(scored.anomaly_maps.reshape(n, -1).mean(1), scored.reconstruction, atol=2e-3)

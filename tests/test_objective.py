import math

import numpy as np
import pytest
import torch
from numerics import assert_close

from skipganomaly.models import SkipGANomaly
from skipganomaly.models.objective import (
    anomaly_map,
    anomaly_score,
    contextual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    latent_loss,
    latent_score,
    reconstruction_score,
)
from skipganomaly.scoring.normalization import ScoreNormalization, min_max_scale


def test_contextual_loss_is_mean_absolute_error():
    x = torch.tensor([[[[0.0, 1.0], [-1.0, 0.5]]]])
    x_hat = torch.tensor([[[[0.5, 1.0], [1.0, 0.0]]]])
    # |0-0.5| + 0 + |-1-1| + |0.5-0| = 0.5 + 0 + 2 + 0.5 = 3, over 4 pixels
    assert contextual_loss(x, x_hat).item() == pytest.approx(0.75)


def test_latent_loss_is_mean_squared_error():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    g = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    # (1 + 4 + 9 + 0) / 4
    assert latent_loss(f, g).item() == pytest.approx(3.5)


def test_adversarial_losses_match_log_formulas():
    zero = torch.zeros(3)
    assert generator_adversarial_loss(zero).item() == pytest.approx(math.log(2))
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    logit_real, logit_fake = torch.tensor([2.0]), torch.tensor([-1.0])
    d_real = 1 / (1 + math.exp(-2.0))
    d_fake = 1 / (1 + math.exp(1.0))
    expected = -math.log(d_real) - math.log(1 - d_fake)
    assert discriminator_loss(logit_real, logit_fake).item() == pytest.approx(expected, rel=1e-6)
    assert generator_adversarial_loss(logit_fake).item() == pytest.approx(-math.log(d_fake), rel=1e-6)
    # Logits keep the loss finite where probabilities saturate.
    assert torch.isfinite(discriminator_loss(torch.tensor([200.0]), torch.tensor([200.0])))


def test_per_image_scores_and_eq5():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, -2.0]]]])
    r = reconstruction_score(x, x_hat)
    assert r.tolist() == pytest.approx([1.0, 0.5])
    l_ = latent_score(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[3.0, 1.0], [0.0, 0.0]]))
    assert l_.tolist() == pytest.approx([2.0, 0.0])
    a = anomaly_score(r, l_, 0.9)
    assert a.tolist() == pytest.approx([0.9 * 1.0 + 0.1 * 2.0, 0.9 * 0.5])
    m = anomaly_map(torch.zeros(1, 3, 1, 2), torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 3.0]]]]))
    assert m.flatten().tolist() == pytest.approx([2.0, 1.0])


def test_model_score_is_consistent_with_its_map():
    torch.manual_seed(0)
    model = SkipGANomaly(16, 3, ngf=4, ndf=4, nz=8).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model.score(x, 0.9, details=True)
        x_hat = model(x)
        _, f_real = model.discriminator(x)
        _, f_fake = model.discriminator(x_hat)
    # The same values through other reductions (a map's mean against the score's own): a tolerance.
    assert_close(
        out.reconstruction, out.anomaly_map.flatten(1).mean(1), rtol=1e-5, atol=1e-6, name="map mean"
    )
    assert_close(out.latent, (f_real - f_fake).pow(2).mean(1), rtol=1e-5, atol=1e-6, name="latent")
    assert_close(out.score, 0.9 * out.reconstruction + 0.1 * out.latent, rtol=1e-5, atol=1e-6, name="score")


def test_min_max_scale_eq6():
    assert min_max_scale(np.array([2.0, 4.0, 3.0])).tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert min_max_scale(np.array([1.0, 1.0])).tolist() == [0.0, 0.0]


def test_score_normalization_round_trip():
    norm = ScoreNormalization(low=1.0, high=3.0, threshold=0.75, method="m", map_high=0.2)
    assert norm(np.array([1.0, 2.0, 5.0])).tolist() == pytest.approx([0.0, 0.5, 2.0])
    again = ScoreNormalization.from_dict(norm.to_dict())
    assert again == norm

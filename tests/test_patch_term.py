"""The ``patch`` score term and map (models/patch_knn.py): the distance against a brute-force
search, the features' shape at every image size, a foreign region found where it was pasted, the
map switch, the bank a run fills, and the export's term and map against PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from skipganomaly.deploy.export import map_source
from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.patch_knn import (
    BANK_CHUNK,
    nearest_patch_distance,
    patch_feature_width,
    sample_bank,
)
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.training.trainer import Trainer

TERMS = "reconstruction,latent,patch"


def test_nearest_patch_distance_equals_a_brute_force_search_over_several_chunks():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(BANK_CHUNK * 2 + 77, 12, generator=generator) * 3 + 50  # far from zero
    features = torch.randn(2, 12, 3, 4, generator=generator) * 3 + 50
    centre = rows.mean(0)
    got = nearest_patch_distance(features, rows - centre, centre)
    queries = features.permute(0, 2, 3, 1).reshape(-1, 12).double()
    expected = torch.cdist(queries, rows.double()).min(1).values.reshape(2, 3, 4).float()
    error = (got - expected).abs().max().item()
    assert error < 1e-3 * expected.mean().item(), f"largest error {error:.3e} of {expected.mean():.3f}"


@pytest.mark.parametrize("size", [16, 32, 64])
def test_patch_features_cover_the_image_at_a_quarter_of_its_side(size):
    model = SkipGANomaly(size, 3, 8, 8, 16, score_terms=TERMS, patch_bank=64).eval()
    with torch.no_grad():
        features = model.patch_features_of(torch.zeros(2, 3, size, size))
    assert features.shape == (2, patch_feature_width(size, 8), size // 4, size // 4)
    assert model.patch_bank.shape == (64, patch_feature_width(size, 8))
    assert patch_feature_width(size, 8) == (16 if size == 16 else 48)  # blocks 2 (and 3)


def normal_images(n: int, size: int = 32) -> torch.Tensor:
    """Smooth horizontal ramps with a little noise: every region of one looks like the others'."""
    generator = torch.Generator().manual_seed(1)
    ramp = torch.linspace(-0.6, 0.6, size).expand(size, size)
    return ramp.expand(n, 3, size, size) + 0.02 * torch.randn(n, 3, size, size, generator=generator)


def test_a_pasted_foreign_region_scores_higher_and_the_map_peaks_on_it():
    model = SkipGANomaly(32, 3, 8, 8, 16, score_terms=TERMS, patch_bank=2048).eval()
    normal = normal_images(24)
    with torch.no_grad():
        model.set_patch_bank(sample_bank(model.patch_features_of(normal[:20]), 2048, seed=0))
        damaged = normal[20:].clone()
        noise = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
        damaged[:, :, 16:24, 4:12] = noise
        model.set_patch_map(True)
        clean_out = model.score(normal[20:], details=True)
        damaged_out = model.score(damaged, details=True)
    clean, hurt = clean_out.terms["patch"], damaged_out.terms["patch"]
    assert (hurt > 2 * clean.max()).all(), f"clean {clean.tolist()} damaged {hurt.tolist()}"
    inside = damaged_out.anomaly_map[:, 16:24, 4:12].mean((1, 2))
    outside = damaged_out.anomaly_map[:, :8, 20:].mean((1, 2))
    assert (inside > 2 * outside).all(), f"inside {inside.tolist()} outside {outside.tolist()}"
    torch.testing.assert_close(damaged_out.anomaly_map, damaged_out.maps["patch"])
    assert map_source(model) == "patch"
    model.set_patch_map(False)  # back to |x - G(x)|
    with torch.no_grad():
        plain = model.score(damaged, details=True)
    assert map_source(model) == "reconstruction"
    assert not torch.allclose(plain.anomaly_map, plain.maps["patch"])
    torch.testing.assert_close(plain.score, damaged_out.score)  # the map does not change the score


def test_the_bank_a_run_fills_batch_by_batch_equals_a_draw_over_all_regions():
    from skipganomaly.data.base import ImageSet
    from skipganomaly.scoring.engine import ScoringOptions, patch_bank

    model = SkipGANomaly(32, 3, 8, 8, 16, score_terms=TERMS, patch_bank=300).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    image_set = ImageSet(class_ids=np.zeros(10, np.int64), images=images)
    options = ScoringOptions(image_size=32, channels=3, batch_size=3, device=torch.device("cpu"))
    got = patch_bank(model, image_set, options, seed=5)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        expected = sample_bank(model.patch_features_of(x), 300, seed=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # Fewer regions than rows (10 images x 64 regions < 1000): each is in the bank, repeated.
    model = SkipGANomaly(32, 3, 8, 8, 16, score_terms=TERMS, patch_bank=1000).eval()
    rows = patch_bank(model, image_set, options, seed=5)
    assert rows.shape == (1000, 48) and len(torch.unique(rows, dim=0)) == 640


def test_patch_bank_must_be_positive():
    with pytest.raises(UserError, match="patch_bank"):
        build_config({"model.patch_bank": 0})


def test_a_run_fills_the_bank_and_the_export_computes_the_same_term_and_map(tmp_path):
    from fixture_data import write_mvtec

    from skipganomaly.data import prepare_data
    from skipganomaly.deploy.export import ScoringGraph, mapped_terms_of, run_onnx, trace_to_onnx
    from skipganomaly.deploy.rewrites import inference_rewrites

    category = write_mvtec(tmp_path / "widget", n_train=24, n_good=6, n_defect=4)
    config = tiny_config(
        **{"data.dataset": "mvtec", "data.root": str(category), "data.protocol": "normal-only",
           "data.image_size": 32, "train.preset": "restoring", "train.epochs": 1, "train.threads": 1,
           "model.score_terms": "reconstruction,latent,segmentation,patch", "model.patch_bank": 512,
           "eval.synthetic_images": 16}
    )  # fmt: skip
    splits = prepare_data(config.data)
    run = tmp_path / "run"
    metrics = Trainer(config, splits, run, log=lambda s: None, progress=False).fit()
    record = metrics["history"][0]["synthetic_val"]
    assert any(key.startswith("patch") for key in record["pixel_auroc"]), record
    model = load_checkpoint(checkpoint_path(run, "best")).build_model().eval()
    assert float(model.patch_map_on) == float(record["map"] == "patch")
    # The bank is centred: its rows average to zero, the centre kept beside it.
    assert model.patch_bank.abs().sum() > 0 and model.patch_centre.abs().sum() > 0
    assert model.patch_bank.mean(0).abs().max() < 1e-4 * model.patch_bank.abs().max()
    # The graph the export traces (after its inference rewrites) against the model itself. (A
    # one-epoch run's terms barely vary over normal images, so the export's check on standardised
    # scores is not what is tested here: the patch outputs are, relative to their size.)
    model.set_patch_map(True)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1

    class Identity(torch.nn.Module):
        threshold = 0.0

        def forward(self, score):
            return score

    mapped = mapped_terms_of(model, x[:2], 0.9)
    assert "patch" in mapped
    rewritten, _ = inference_rewrites(model, lambda m: ScoringGraph(m, 0.9, Identity(), mapped)(images))
    graph = ScoringGraph(rewritten, 0.9, Identity(), mapped).eval()
    onnx = run_onnx(trace_to_onnx(graph, images[:2]), images.numpy())
    with torch.no_grad():
        want = model.score(x, details=True)
    for name, expected in (("patch", want.terms["patch"]), ("patch_map", want.maps["patch"]),
                           ("anomaly_map", want.anomaly_map)):  # fmt: skip
        gap, scale = np.abs(onnx[name] - expected.numpy()).max(), expected.abs().max().item()
        assert gap <= 1e-4 * scale, (
            f"{name}: ONNX differs from PyTorch by {gap:.3e} (largest value {scale:.3e})"
        )

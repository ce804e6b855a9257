"""ONNX export and the Detector: the exported graph computes what the PyTorch scorer of the same run
computes, describes itself, refuses damage, and scores PIL images, arrays and paths without PyTorch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli
from deploy_helpers import split_images, write_pngs
from PIL import Image
from torch import nn

from skipganomaly.deploy.detector import Detector, TorchEngine
from skipganomaly.deploy.export import ScoringGraph, inference_rewrites, score_output_fields
from skipganomaly.deploy.run_exports import exported_for_run
from skipganomaly.formats.onnx_file import content_sha256, read_exported, read_metadata_props
from skipganomaly.models import build_model
from skipganomaly.scoring.metrics import auroc
from skipganomaly.scoring.normalization import ScoreNormalization
from skipganomaly.specs.errors import UserError


def test_the_export_matches_the_pytorch_scorer_on_a_digits_run(digits_run, digits_onnx):
    """Parity: ONNX Runtime against PyTorch (the run's own scorer, eval mode, fp32) on the run's
    test split: raw scores within 1e-4 relative, every verdict the same, the same AUROC."""
    images, labels = split_images(digits_run)
    torch_out = TorchEngine(digits_run, device="cpu").run(images)
    onnx_out = Detector.from_onnx(digits_onnx).engine.run(images)
    raw_t, raw_o = torch_out["raw_score"], onnx_out["raw_score"].astype(np.float64)
    relative = np.abs(raw_o - raw_t) / np.abs(raw_t)
    assert relative.max() <= 1e-4, f"largest relative difference {relative.max():.2e} at {relative.argmax()}"
    flipped = np.flatnonzero(torch_out["is_anomalous"] != onnx_out["is_anomalous"])
    assert flipped.size == 0, f"verdicts differ on images {flipped.tolist()}"
    assert np.array_equal(
        onnx_out["is_anomalous"], onnx_out["score"] >= Detector.from_onnx(digits_onnx).threshold
    )
    # The same ranking, so the same AUROC (and it is a real detector, not chance).
    assert auroc(labels, raw_t) == auroc(labels, raw_o) > 0.6, (auroc(labels, raw_t), auroc(labels, raw_o))
    scale = np.abs(raw_t).max() / (np.ptp(raw_t) or 1.0)
    assert np.allclose(onnx_out["score"], torch_out["score"], rtol=0, atol=1e-4 * scale * 10)
    for name in ("reconstruction", "latent"):
        assert np.allclose(onnx_out[name], torch_out[name], rtol=1e-4, atol=1e-7), name
    assert np.allclose(
        onnx_out["anomaly_map"], torch_out["anomaly_map"], atol=2e-3
    )  # torch keeps maps in fp16


def test_the_file_describes_itself_and_refuses_damage(digits_run, digits_onnx, tmp_path):
    exported = read_exported(digits_onnx)
    m = exported.metadata
    assert (m["image_size"], m["channels"], m["input"]["dtype"], m["input"]["layout"]) == (
        16,
        1,
        "uint8",
        "NHWC",
    )
    assert m["model"]["name"] == "skipganomaly" and m["protocol"] == "val-split"
    assert m["package_version"] == "0.1.0" and len(m["checkpoint"]["sha256"]) == 64
    assert {"low", "high", "threshold", "map_high"} <= set(m["normalization"])
    assert m["batchnorm_nodes_left"] == 0 and any(
        r.startswith("batchnorm_folded") for r in m["graph_rewrites"]
    )
    names = [o["name"] for o in m["outputs"]]
    assert names[:3] == ["score", "is_anomalous", "raw_score"] and "anomaly_map" in names
    import onnx

    graph = onnx.load(digits_onnx).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    props = read_metadata_props(digits_onnx.read_bytes())
    assert (
        props["threshold"] == repr(m["normalization"]["threshold"])
        and props["content_sha256"] == exported.content_sha256
    )
    # A metadata note may be added (the hash covers the graph and the decision fields); one
    # changed weight byte is refused.
    proto = onnx.load(digits_onnx)
    proto.metadata_props.add(key="note", value="inspected")
    edited = proto.SerializeToString()
    assert content_sha256(edited, exported.metadata) == exported.content_sha256
    assert read_exported(digits_onnx).content_sha256 == exported.content_sha256
    weights = next(t for t in proto.graph.initializer if len(t.raw_data) > 16)
    raw = bytearray(weights.raw_data)
    raw[8] ^= 0x01
    weights.raw_data = bytes(raw)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(proto.SerializeToString())
    with pytest.raises(UserError, match="content check"):
        Detector.from_onnx(damaged)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(digits_onnx.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"truncated\.onnx"):
        read_exported(truncated)


@pytest.mark.parametrize("size", [32, 64])
def test_the_inference_rewrites_compute_the_same_function(size):
    """BatchNorm folding, dense one-pixel layers, small-map products and sub-pixel transposed
    convolutions leave the score (and every part of it) unchanged, with non-trivial BatchNorm."""
    torch.manual_seed(0)
    model = build_model("skipganomaly", image_size=size, channels=3, ngf=8, ndf=8, nz=16).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    images = torch.randint(0, 256, (5, size, size, 3), dtype=torch.uint8)
    normalization = ScoreNormalization(low=0.1, high=0.3, threshold=0.5)
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    fields = score_output_fields(model, x, 0.9)
    with torch.no_grad():
        expected = ScoringGraph(model, 0.9, normalization, fields)(images)
        for options in ({"small_maps": True}, {"small_maps": False, "sub_pixel": True}):
            rewritten, counts = inference_rewrites(
                model, lambda m: ScoringGraph(m, 0.9, normalization, fields)(images), **options
            )
            assert counts["batchnorm_folded"] > 0 and counts["dense_one_pixel"] > 0, counts
            assert counts["small_map_matmul" if options.get("small_maps") else "sub_pixel_conv_transpose"] > 0
            assert not any(isinstance(m, nn.BatchNorm2d) for m in rewritten.modules())
            got = ScoringGraph(rewritten, 0.9, normalization, fields)(images)
            names = ScoringGraph(model, 0.9, normalization, fields).output_names
            for name, a, b in zip(names, expected, got, strict=True):
                if a.dtype == torch.bool:
                    assert torch.equal(a, b), name
                else:
                    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, options, (a - b).abs().max())


def test_the_detector_scores_pil_images_arrays_and_paths_alike(digits_run, digits_onnx, tmp_path):
    detector = Detector.from_onnx(digits_onnx)
    images, _ = split_images(digits_run)
    image = images[3]  # 16 x 16 x 1 uint8
    [path] = write_pngs(tmp_path / "one", image[None], "x")
    forms = [
        image,  # H x W x 1
        image[:, :, 0],  # H x W
        np.repeat(image, 3, axis=2),  # H x W x 3 (converted to gray as a colour file would be)
        Image.fromarray(image[:, :, 0]),
        path,
        str(path),
    ]
    results = detector.score(forms)
    scores = [p.score for p in results]
    assert np.allclose(scores, scores[0], rtol=1e-6), scores
    first = results[0]
    assert first.anomaly_map.shape == (16, 16) and first.reconstructed.shape == (16, 16, 1)
    assert first.reconstructed.dtype == np.uint8 and set(first.parts) == {"reconstruction", "latent"}
    assert first.is_anomalous == (first.score >= detector.threshold)
    assert results[4].path == str(path) and results[4].size == (16, 16)
    # A folder stands for its images; one image alone gives a list of one.
    folder = write_pngs(tmp_path / "many", images[:5], "d")[0].parent
    assert len(detector.score(folder)) == 5 and len(detector.score(image)) == 1
    with pytest.raises(UserError, match="shape"):
        detector.score(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(UserError, match="cannot be read"):
        (tmp_path / "broken.png").write_bytes(b"not an image")
        detector.score(tmp_path / "broken.png")


def test_from_run_exports_once_and_again_when_the_checkpoint_changes(digits_run):
    first = exported_for_run(digits_run)
    assert first.path == digits_run / "exports" / "best.onnx"
    again = exported_for_run(digits_run)
    assert again.content_sha256 == first.content_sha256  # read back, not exported anew
    detector = Detector.from_run(digits_run)
    assert detector.info["engine"] == "onnxruntime" and detector.info["checkpoint"]["which"] == "best"
    torch_detector = Detector.from_run(digits_run, engine="torch", device="cpu")
    images, _ = split_images(digits_run)
    a = [p.raw_score for p in detector.score(list(images[:8]))]
    b = [p.raw_score for p in torch_detector.score(list(images[:8]))]
    assert np.allclose(a, b, rtol=1e-4)


def test_scoring_an_export_never_imports_torch(digits_run, digits_onnx):
    """A scoring-only install (pip install skipganomaly[serve]) works without PyTorch: imports of
    torch are made to fail, and the Detector still scores; a run whose export is up to date is
    served from it without PyTorch too."""
    exported_for_run(digits_run)  # made here (with PyTorch) if an earlier test did not
    code = f"""
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import numpy as np
from skipganomaly.detector import Detector
from skipganomaly.service import create_app
from skipganomaly.deploy.run_exports import exported_for_run
exported_for_run({str(digits_run)!r})  # the run's export is up to date: read, not made again
detector = Detector.from_onnx({str(digits_onnx)!r})
results = detector.score([np.full((16, 16), 128, np.uint8), np.zeros((20, 30, 3), np.uint8)])
create_app(detector)
import skipganomaly.cli
skipganomaly.cli.build_parser()  # the serve verb's path: cli, detector, service
print(len(results), results[0].anomaly_map.shape, sorted(m for m in ("torch", "sklearn", "scipy") if sys.modules.get(m)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "2 (16, 16) []", done.stdout


def test_export_and_predict_with_the_onnx_engine_from_the_command_line(digits_run, tmp_path):
    images, _ = split_images(digits_run)
    folder = write_pngs(tmp_path / "images", images[:12], "digit")[0].parent
    target = tmp_path / "out" / "model.onnx"
    exported = run_cli("export", "--run", digits_run, "--output", target)
    assert exported.returncode == 0, exported.stderr
    assert target.is_file() and "batchnorm_folded" in exported.stdout and "SHA-256" in exported.stdout
    rows = {}
    for engine in ("torch", "onnx"):
        csv_file = tmp_path / f"{engine}.csv"
        done = run_cli("predict", "--run", digits_run, folder, "--output", csv_file, "--engine", engine)
        assert done.returncode == 0, done.stderr
        lines = csv_file.read_text().splitlines()
        assert (
            lines[0]
            == "path,score,is_anomalous,raw_score,reconstruction,latent,heatmap,out_of_domain,domain_reason"
        )
        rows[engine] = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows["torch"]] == [r[0] for r in rows["onnx"]] and len(rows["onnx"]) == 12
    assert [r[2] for r in rows["torch"]] == [r[2] for r in rows["onnx"]]
    assert np.allclose([float(r[3]) for r in rows["torch"]], [float(r[3]) for r in rows["onnx"]], rtol=1e-4)
    bad = run_cli("export", "--run", tmp_path / "nowhere")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nowhere" in bad.stderr
    wrong = run_cli("export", "--run", digits_run, "--output", tmp_path / "model.txt")
    assert wrong.returncode == 2 and "*.onnx" in wrong.stderr


def test_models_that_search_at_scoring_time_are_refused(tmp_path):
    from skipganomaly.deploy.export import export_checkpoint
    from skipganomaly.formats.checkpoint import Checkpoint
    from skipganomaly.specs.config import build_config

    config = build_config({"model.name": "anogan", "data.image_size": 16, "model.ngf": 8, "model.ndf": 8})
    model = build_model("anogan", image_size=16, channels=1, ngf=8, ndf=8, nz=16)
    checkpoint = Checkpoint(
        "anogan", dict(model.args), config, model.state_dict(), ScoreNormalization(0.0, 1.0, 0.5), epoch=1
    )
    with pytest.raises(UserError, match="cannot be exported"):
        export_checkpoint(checkpoint)


@pytest.mark.parametrize("name", ["ganomaly", "egbad"])
def test_the_baselines_export_too(name):
    """Export traces each model's own score: the baselines' (other networks, other terms) too."""
    from skipganomaly.deploy.export import export_checkpoint
    from skipganomaly.formats.checkpoint import Checkpoint
    from skipganomaly.specs.config import build_config

    config = build_config({"model.name": name, "data.image_size": 32, "model.ngf": 8, "model.ndf": 8})
    torch.manual_seed(0)
    model = build_model(name, image_size=32, channels=3, ngf=8, ndf=8, nz=16)
    checkpoint = Checkpoint(
        name, dict(model.args), config, model.state_dict(), ScoreNormalization(0.0, 1.0, 0.5), 1
    )
    result = export_checkpoint(checkpoint)  # raises unless ONNX Runtime agrees with PyTorch within 1e-4
    assert result.max_relative_difference <= 1e-4 and result.metadata["model"]["name"] == name
    assert result.metadata["batchnorm_nodes_left"] == 0


def test_the_improved_score_exports():
    """The improved recipe's score (kNN over a feature bank, the rotation head's four passes,
    standardised terms) traces to ONNX and agrees with PyTorch like the paper's score."""
    from skipganomaly.deploy.export import export_checkpoint
    from skipganomaly.formats.checkpoint import Checkpoint
    from skipganomaly.specs.config import build_config

    terms = "reconstruction,latent,knn,rotation"
    overrides = {
        "model.rotation_head": True,
        "model.score_terms": terms,
        "model.knn_bank": 40,
        "train.w_rot": 1.0,
    }
    config = build_config(
        {"model.name": "skipganomaly", "data.image_size": 32, "model.ngf": 8, "model.ndf": 8, **overrides}
    )
    torch.manual_seed(0)
    model = build_model(
        "skipganomaly",
        image_size=32,
        channels=3,
        ngf=8,
        ndf=8,
        nz=16,
        rotation_head=True,
        score_terms=terms,
        knn_bank=40,
    )
    model.eval()
    with torch.no_grad():
        model.set_feature_bank(model.features_of(torch.rand(40, 3, 32, 32) * 2 - 1))
        model.set_term_statistics(torch.tensor([0.3, 0.1, 1.0, 1.4]), torch.tensor([0.05, 0.02, 0.3, 0.2]))
    checkpoint = Checkpoint(
        "skipganomaly", dict(model.args), config, model.state_dict(), ScoreNormalization(0.0, 1.0, 0.5), 1
    )
    result = export_checkpoint(checkpoint)  # raises unless ONNX Runtime agrees with PyTorch within 1e-4
    assert result.max_relative_difference <= 1e-4
    assert result.metadata["model"]["args"]["score_terms"] == terms


def _documented_outputs() -> set[str]:
    """The output names docs/deployment.md's table of outputs lists (rows starting `` `name` ``)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    start = text.index("<!-- outputs -->")
    table = text[start : text.index("<!-- /outputs -->")]
    return {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}


def test_every_output_of_an_export_is_named_and_documented(digits_onnx):
    """The graph's outputs are exactly the metadata's, each described there and in the docs' table
    (a term's map by its pattern); none carries an exporter's name; the parts are terms only."""
    import onnxruntime as ort

    from skipganomaly.deploy.contract import describe_output

    exported = read_exported(digits_onnx)
    session = ort.InferenceSession(exported.model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == [o["name"] for o in exported.metadata["outputs"]]
    documented = _documented_outputs()
    for output in exported.metadata["outputs"]:
        assert output["description"] and output["description"] == describe_output(output["name"])
        pattern = (
            "<term>_map" if output["name"].endswith("_map") and output["name"] != "anomaly_map" else None
        )
        assert output["name"] in documented or pattern in documented, output["name"]
    assert not [n for n in names if "::" in n or n == "terms"], names
    terms = exported.metadata["score_terms"]
    assert [t["name"] for t in terms] == ["reconstruction", "latent"] and terms[0]["map"] == "anomaly_map"
    assert exported.metadata["export_check"]["source"] == "the run's validation images"
    assert exported.metadata["export_check"]["verdicts_differing"] == 0
    assert exported.metadata["export_check"]["max_score_difference"] <= 1e-4


def test_the_improved_scores_outputs_are_its_terms_by_name():
    """A model summing knn and rotation exports those two terms under their names, nothing else."""
    from skipganomaly.deploy.contract import describe_output, output_names

    names = output_names(("reconstruction", "knn", "rotation"), ("knn",))
    assert names == [
        "score",
        "is_anomalous",
        "raw_score",
        "reconstruction",
        "latent",
        "knn",
        "rotation",
        "anomaly_map",
        "reconstructed",
        "knn_map",
    ]
    assert all(describe_output(n) for n in names) and describe_output("onnx::Sub_1") is None


def test_the_knn_distance_is_stable_in_float32_features():
    """Features far from the origin (a large common offset): the distance written as a difference
    of squares in float32 is off by ~1e-2 here; the centred float64 form matches the exact one."""
    from skipganomaly.models.score_terms import nearest_neighbour_distance

    generator = torch.Generator().manual_seed(0)
    bank = 300.0 + torch.randn(200, 64, generator=generator)
    features = 300.0 + torch.randn(6, 64, generator=generator)
    exact = torch.cdist(features.double(), bank.double()).topk(3, dim=1, largest=False).values.mean(1)
    naive = (
        ((features**2).sum(1, keepdim=True) + (bank**2).sum(1) - 2 * features @ bank.T)
        .clamp_min(0)
        .sqrt()
        .topk(3, dim=1, largest=False)
        .values.mean(1)
    )
    got = nearest_neighbour_distance(features, bank, 3)
    assert float((naive.double() - exact).abs().max()) > 1e-3  # the problem is real here
    assert float((got.double() - exact).abs().max() / exact.abs().max()) < 1e-6


def test_a_bad_image_in_a_list_is_its_own_error(digits_onnx, digits_run, tmp_path):
    """Detector.score: a truncated file, a missing file and an unusable array among good images
    come back as those images' errors; the good ones are scored as when scored alone."""
    images, _ = split_images(digits_run)
    good = write_pngs(tmp_path, images[:3], "good")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[0].read_bytes()[:40])
    detector = Detector.from_onnx(digits_onnx, threads=1)
    results = detector.score(
        [good[0], cut, images[1], tmp_path / "missing.png", np.zeros((4, 4, 7)), good[2]]
    )
    assert [bool(r.error) for r in results] == [False, True, False, True, True, False]
    assert "cut.png" in results[1].error and "missing.png" in results[3].error
    assert np.isnan(results[1].score) and not results[1].is_anomalous
    alone = detector.score(good[2])[0]
    assert results[5].score == pytest.approx(alone.score, abs=1e-6)
    assert results[0].shares and sum(results[0].shares.values()) == pytest.approx(1.0)
    with pytest.raises(UserError, match="cut.png"):
        detector.score(cut)  # one image alone: its error is the call's
    with pytest.raises(UserError, match="batch_size"):
        detector.score([good[0]], batch_size=0)


def test_out_of_domain_flags_colour_and_shape_but_not_normal_images(digits_onnx, digits_run):
    """Grey digits: normal test images are in domain; a colour image or a wide one is flagged, and
    the flag changes neither score nor verdict."""
    images, labels = split_images(digits_run)
    detector = Detector.from_onnx(digits_onnx, threads=1)
    normal = detector.score([images[i] for i in np.flatnonzero(labels == 0)[:40]], with_maps=False)
    assert sum(p.out_of_domain for p in normal) <= 1
    colour = np.repeat(images[0], 3, axis=2).copy()
    colour[:, :, 0] = 255 - colour[:, :, 0]
    wide = np.repeat(images[0], 3, axis=1)
    flagged = detector.score([colour, wide], with_maps=False)
    assert "colour" in flagged[0].domain_reason and flagged[0].out_of_domain
    assert "aspect" in flagged[1].domain_reason and flagged[1].out_of_domain


def test_predict_scores_with_a_bare_onnx_file_and_no_torch(digits_onnx, digits_run, tmp_path):
    """``predict MODEL.onnx PATH``: no run folder, and PyTorch made unimportable: the CSV has the
    detector's scores and the out-of-domain columns."""
    images, _ = split_images(digits_run)
    paths = write_pngs(tmp_path / "images", images[:2], "x")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {**__import__("os").environ}
    env["PYTHONPATH"] = f"{blocker}:{env.get('PYTHONPATH', '')}"
    output = tmp_path / "scores.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skipganomaly",
            "predict",
            str(digits_onnx),
            str(tmp_path / "images"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = output.read_text().splitlines()
    assert rows[0].endswith("out_of_domain,domain_reason") and len(rows) == 3
    expected = {
        str(p): r.score for p, r in zip(paths, Detector.from_onnx(digits_onnx).score(paths), strict=True)
    }
    for line in rows[1:]:
        path, score = line.split(",")[:2]
        assert float(score) == pytest.approx(expected[path], abs=1e-5)
        assert line.split(",")[7] == "0"

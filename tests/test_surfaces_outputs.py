"""Issue 22, data loss: no output of any verb replaces an input it reads, or a file that is not its
own earlier output of the same kind, unless the user passes --overwrite (then never an input)."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import run_cli
from deploy_helpers import split_images, write_pngs

from skipganomaly.deploy.predict import Predictor, plan_outputs, predict_to_csv
from skipganomaly.scoring.heatmaps import is_heatmap_file
from skipganomaly.specs.errors import UserError


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def predictor(digits_run):
    return Predictor.from_run(digits_run, device="cpu")


@pytest.fixture
def images(digits_run, tmp_path):
    pictures, _ = split_images(digits_run)
    write_pngs(tmp_path / "imgs", pictures[:5], "img")
    return tmp_path / "imgs"


def test_heatmaps_into_the_input_folder_never_replace_an_input(predictor, images, tmp_path):
    before = digests(images)
    counts = predict_to_csv(predictor, [str(images)], tmp_path / "o.csv", heatmaps=images)
    assert counts["scored"] == 5
    after = digests(images)
    assert {name: after[name] for name in before} == before  # every input byte for byte
    maps = sorted(set(after) - set(before))
    assert maps == [f"img_{i}_1.png" for i in range(5)]
    assert all(is_heatmap_file(images / name) for name in maps)
    assert not any(is_heatmap_file(images / name) for name in before)
    # Run again: the earlier maps are now inputs too; still nothing read is replaced.
    again = digests(images)
    predict_to_csv(predictor, [str(images)], tmp_path / "o.csv", heatmaps=images)
    assert {name: digests(images)[name] for name in again} == again


def test_the_csv_never_replaces_an_input_even_with_overwrite(predictor, images):
    target = images / "img_0.png"
    before = target.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(UserError, match="is one of the files this command reads"):
            predict_to_csv(predictor, [str(images)], target, overwrite=overwrite)
    assert target.read_bytes() == before


def test_a_users_skipped_list_is_neither_replaced_nor_deleted(predictor, images, tmp_path):
    output = tmp_path / "o.csv"
    mine = tmp_path / "o.skipped.csv"
    mine.write_text("my notes\n1,2,3\n")
    (images / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"o\.skipped\.csv exists and is not a skipped-images list"):
        predict_to_csv(predictor, [str(images)], output, skip_bad=True)
    assert mine.read_text() == "my notes\n1,2,3\n" and not output.exists()
    (images / "broken.png").unlink()
    with pytest.raises(UserError, match="--overwrite"):
        predict_to_csv(predictor, [str(images)], output)  # no skipped image: still not deleted
    assert mine.read_text() == "my notes\n1,2,3\n"
    # Its own earlier list is replaced (and removed when nothing is skipped).
    mine.unlink()
    (images / "broken.png").write_bytes(b"not a png")
    assert predict_to_csv(predictor, [str(images)], output, skip_bad=True)["skipped"] == 1
    assert mine.read_text().startswith("path,reason")
    (images / "broken.png").unlink()
    predict_to_csv(predictor, [str(images)], output)
    assert not mine.exists()
    # --overwrite: the user asked.
    mine.write_text("my notes\n")
    (images / "broken.png").write_bytes(b"not a png")
    predict_to_csv(predictor, [str(images)], output, skip_bad=True, overwrite=True)
    assert mine.read_text().startswith("path,reason")


def test_foreign_files_at_output_names_are_refused_own_ones_replaced(images, tmp_path):
    paths = sorted(images.iterdir())
    heat = tmp_path / "heat"
    heat.mkdir()
    (heat / "img_0.png").write_bytes(paths[1].read_bytes())  # a user's picture under that name
    with pytest.raises(UserError, match=r"--heatmaps: .*img_0\.png exists and is not an anomaly map"):
        plan_outputs(paths, tmp_path / "o.csv", heat)
    assert plan_outputs(paths, tmp_path / "o.csv", heat, overwrite=True)[str(paths[0])] == heat / "img_0.png"
    (tmp_path / "o.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"o\.csv exists and is not a predictions CSV"):
        plan_outputs(paths, tmp_path / "o.csv", None)
    (tmp_path / "o.csv.partial").write_text("x\n")
    (tmp_path / "o.csv").write_text("path,score,is_anomalous,raw_score\n")
    with pytest.raises(UserError, match=r"o\.csv\.partial exists and is not a partial predictions CSV"):
        plan_outputs(paths, tmp_path / "o.csv", None)


def test_predict_cli_refuses_before_scoring(digits_run, images, tmp_path):
    target = images / "img_0.png"
    before = target.read_bytes()
    result = run_cli("predict", images, "--run", digits_run, "--output", target, "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is one of the files this command reads" in result.stderr and target.read_bytes() == before
    onnx_file = tmp_path / "best.onnx"
    onnx_file.write_bytes(b"x")
    result = run_cli("predict", images, "--run", onnx_file, "--output", tmp_path / "o.csv")
    assert result.returncode == 2
    assert "is an exported model file, not a run folder" in result.stderr and "serve --onnx" in result.stderr


def test_export_refuses_a_foreign_file_and_cleans_a_killed_exports_litter(digits_run, tmp_path):
    from skipganomaly.deploy.export import export_run

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UserError, match=r"notes\.txt is a file, not a folder"):
        export_run(digits_run, output=notes / "m.onnx")
    foreign = tmp_path / "m.onnx"
    foreign.write_text("my own onnx notes")
    with pytest.raises(UserError, match=r"m\.onnx exists and is not an ONNX export .*--overwrite"):
        export_run(digits_run, output=foreign)
    assert foreign.read_text() == "my own onnx notes"
    litter = tmp_path / ".m.onnx.abcd1234.tmp"
    litter.write_bytes(b"\0" * 1000)
    other = tmp_path / ".other.onnx.abcd1234.tmp"  # another file's write in progress: not ours
    other.write_bytes(b"\0")
    export_run(digits_run, output=foreign, overwrite=True)
    assert not litter.exists() and other.exists()
    first = foreign.read_bytes()
    export_run(digits_run, output=foreign)  # its own earlier export: replaced without --overwrite
    assert foreign.read_bytes()[:64] == first[:64]


def test_test_verb_refuses_a_foreign_output(digits_run, tmp_path):
    output = tmp_path / "results.json"
    output.write_text(json.dumps({"mine": 1}))
    result = run_cli("test", "--run", digits_run, "--output", output, "--device", "cpu")
    assert result.returncode == 2 and "is not a test's metrics JSON" in result.stderr
    assert json.loads(output.read_text()) == {"mine": 1}

"""The command line end to end, in subprocesses, as a user runs it."""

import csv
import json

import pytest
from conftest import TINY_CLI, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli(
        "train",
        "--dataset",
        "digits",
        "--abnormal-class",
        "0",
        "--epochs",
        "2",
        "--seed",
        "0",
        "--output",
        run_dir,
        *TINY_CLI,
    )
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_train_writes_the_contract_files(trained_run):
    run_dir, result = trained_run
    for name in (
        "config.yaml",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "metrics.json",
        "scores.csv",
        "log.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"] == "val-split"
    assert metrics["epoch_best"] in (1, 2)
    assert 0.0 <= metrics["val"]["auroc"] <= 1.0 and 0.0 <= metrics["test"]["auroc"] <= 1.0
    assert f"test AUROC {metrics['test']['auroc']:.4f}" in result.stdout
    assert "train 1,295 normal images" in result.stdout  # counts printed at the start


def test_test_verb_reproduces_the_metrics(trained_run, tmp_path):
    run_dir, _ = trained_run
    before = json.loads((run_dir / "metrics.json").read_text())
    out = tmp_path / "again.json"
    result = run_cli("test", "--run", run_dir, "--output", out)
    assert result.returncode == 0, result.stderr
    after = json.loads(out.read_text())
    # The same weights scored by the same code path (eval mode, channels_last, same batch size
    # and thread count) as at the end of training: the same numbers.
    assert after["test"]["auroc"] == pytest.approx(before["test"]["auroc"], abs=1e-9)
    assert after["val"]["auroc"] == pytest.approx(before["val"]["auroc"], abs=1e-9)
    assert after["epoch_best"] == before["epoch_best"]


def test_predict_files_folders_and_heatmaps(trained_run, image_folder, tmp_path):
    run_dir, _ = trained_run
    out, heat = tmp_path / "pred.csv", tmp_path / "heat"
    result = run_cli("predict", "--run", run_dir, image_folder, "--output", out, "--heatmaps", heat)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10
    assert {"path", "score", "is_anomalous"} <= set(rows[0])
    assert all(r["is_anomalous"] in ("0", "1") for r in rows)
    assert len(list(heat.glob("*.png"))) == 10
    # A file's score does not depend on what else is scored with it.
    single = tmp_path / "single.csv"
    target = rows[3]["path"]
    assert (
        run_cli("predict", "--run", run_dir, target, "--output", single, "--batch-size", "1").returncode == 0
    )
    alone = list(csv.DictReader(single.open()))[0]
    assert float(alone["score"]) == pytest.approx(float(rows[3]["score"]), abs=1e-5)


def test_predict_corrupt_image(trained_run, image_folder, tmp_path):
    run_dir, _ = trained_run
    (image_folder / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = run_cli("predict", "--run", run_dir, image_folder, "--output", tmp_path / "p.csv")
    assert result.returncode == 2
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    skipped = run_cli(
        "predict", "--run", run_dir, image_folder, "--output", tmp_path / "p.csv", "--skip-bad-images"
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "1 unreadable skipped" in skipped.stdout
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 10


def test_resume_of_a_finished_run_and_refusal_to_overwrite(trained_run):
    run_dir, _ = trained_run
    again = run_cli("train", "--output", run_dir, *TINY_CLI)
    assert again.returncode == 2 and "holds a finished run; choose another --output" in again.stderr
    resumed = run_cli("train", "--resume", run_dir)
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stdout
    conflicting = run_cli("train", "--resume", run_dir, "--epochs", "5")
    assert conflicting.returncode == 2 and "--epochs" in conflicting.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--dataset", "nope"], "dataset 'nope' is unknown"),
        (["train", "--abnormal-class", "x"], "choose one of: 0, 1"),
        (["train", "--set", "train.lr=abc"], "train.lr"),
        (["train", "--image-size", "20"], "power of two"),
        (["train", "--config", "missing.yaml"], "missing.yaml"),
        (["test", "--run", "no/such/run"], "no/such/run"),
        (["predict", "--run", "no/such/run", "x.png"], "no/such/run"),
        (["train", "--epochs", "many"], "invalid int"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, fragment, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("train", "--dataset", "nope", "--debug", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("verb", ["train", "test", "predict", "reproduce", "tune", "configs"])
def test_help(verb):
    result = run_cli(verb, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_configs_verb_lists_every_bundled_config_in_one_line():
    from skipganomaly.specs.bundled_configs import bundled_configs, description

    result = run_cli("configs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    bundled = bundled_configs()
    assert [line.split()[0] for line in lines] == list(bundled)
    for line, file in zip(lines, bundled.values(), strict=True):
        assert line.endswith(description(file)) and description(file), line
    assert any(line.startswith("digits-quick ") and "Quick start" in line for line in lines)


def test_config_by_bundled_name(tmp_path):
    """--config NAME reads the package's own file, from any folder."""
    result = run_cli(
        "train", "--config", "digits-quick", "--epochs", "1", "--output", tmp_path / "run", *TINY_CLI, cwd=tmp_path
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = (tmp_path / "run" / "config.yaml").read_text()
    assert "preset: improved" in stored and "batch_size: 32" in stored  # from digits-quick.yaml


def test_config_paths_resolve_to_existing_files_first_then_bundled_ones(tmp_path, monkeypatch):
    from skipganomaly.specs.bundled_configs import bundled_configs, find_config
    from skipganomaly.specs.errors import UserError

    bundled = bundled_configs()
    monkeypatch.chdir(tmp_path)
    assert find_config("configs/digits-quick.yaml") == bundled["digits-quick"]  # a clone's old path
    assert find_config("digits-quick.yaml") == bundled["digits-quick"]
    assert find_config("digits") == bundled["digits"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits-quick.yaml").write_text("train:\n  epochs: 1\n")
    assert find_config("configs/digits-quick.yaml").resolve() == tmp_path / "configs" / "digits-quick.yaml"
    with pytest.raises(UserError, match="digits-quick"):  # the error names what exists
        find_config("configs/digits-fast.yaml")
    with pytest.raises(UserError, match="does not exist"):
        find_config("digits-quick.json")

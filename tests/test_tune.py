"""``skipganomaly tune``: best.yaml that ``train --config`` reproduces, one study shared by two
processes, test labels never read to choose, the search space, and the refusals."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError
from skipganomaly.tuning.space import default_space, parse_search, search_space
from skipganomaly.tuning.study import TuneOptions, check_selection_metric, tune

optuna = pytest.importorskip("optuna")

TINY = [
    "--image-size",
    "16",
    "--set",
    "model.ngf=4",
    "--set",
    "model.ndf=4",
    "--set",
    "model.nz=8",
    "--preset",
    "paper",
]
TINY_USER = {
    "data.image_size": 16,
    "model.ngf": 4,
    "model.ndf": 4,
    "model.nz": 8,
    "train.preset": "paper",
    "train.epochs": 1,
    "train.device": "cpu",
}


def test_tune_writes_best_yaml_that_train_reproduces(tmp_path):
    output = tmp_path / "tune"
    result = run_cli(
        "tune", "--trials", "3", "--epochs", "1", "--abnormal-class", "1", *TINY, "--output", output
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["trials"] == {"complete": 3} and summary["selected_on"] == "val.auroc"
    rows = (output / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and "test" not in rows[0]  # no test figure in the trials' table
    best = summary["best"]
    assert best["value"] == pytest.approx(max(float(r.split(",")[2]) for r in rows[1:]), abs=1e-5)
    assert "reported once, never used to choose" in result.stdout
    trained = run_cli("train", "--config", output / "best.yaml", "--output", tmp_path / "run", "--quiet")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert abs(metrics["val"]["auroc"] - best["value"]) <= 0.01
    trained_config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"w_con: {best['params']['train.w_con']}" in trained_config


def test_two_processes_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    commands = [
        [sys.executable, "-m", "skipganomaly", "tune", "--trials", "4", "--epochs", "1", *TINY]
        + ["--storage", storage, "--output", str(tmp_path / name), "--quiet", "--no-prune"]
        for name in ("a", "b")
    ]
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[1] for o in outputs]
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    folders = sorted(p.name for name in ("a", "b") for p in (tmp_path / name / "trials").iterdir())
    assert folders == [f"trial-{n:04d}" for n in range(4)]  # each trial trained once, by one process


def _tune_with_test_labels(tmp_path, monkeypatch, shuffle_seed):
    """Tune on tiny digits with every training reading its test labels permuted by
    ``shuffle_seed`` (None: as they are); validation and training untouched."""
    import skipganomaly.training.runs as runs
    from skipganomaly.tuning.outputs import write_outputs

    real = runs.prepare_data

    def prepare(cfg):
        splits = real(cfg)
        if shuffle_seed is not None:
            splits.test.labels = np.random.default_rng(shuffle_seed).permutation(splits.test.labels)
        return splits

    monkeypatch.setattr(runs, "prepare_data", prepare)
    user = {**TINY_USER, "data.abnormal_class": "1", "data.normal_class": None}
    space = search_space(build_config(user), user, ["train.w_con=1:100:log", "eval.score_lambda=0:1"])
    options = TuneOptions(output=tmp_path, user=user, space=space, trials=3, log=lambda _line: None)
    return write_outputs(tune(options), options, space)


def test_shuffling_test_labels_leaves_the_choice_unchanged(tmp_path, monkeypatch):
    plain = _tune_with_test_labels(tmp_path / "plain", monkeypatch, None)
    shuffled = _tune_with_test_labels(tmp_path / "shuffled", monkeypatch, 1)
    assert shuffled["best"]["params"] == plain["best"]["params"]
    assert shuffled["best"]["value"] == plain["best"]["value"]
    # The shuffle reached the runs: the chosen configuration's test figure (never used) changed.
    assert abs(shuffled["chosen_test"]["auroc"] - plain["chosen_test"]["auroc"]) > 1e-3


def test_selection_metric_must_be_an_auroc():
    check_selection_metric("val.auroc", "val-split")
    check_selection_metric("synthetic_val.auroc", "normal-only")  # the normal-only detector's, once it lands
    with pytest.raises(UserError, match="normal-only tuning needs the synthetic validation"):
        check_selection_metric("val.mean_normal_score", "normal-only")


def test_default_space_leaves_out_what_the_user_fixed():
    keys = [d.key for d in default_space(build_config({"train.preset": "paper"}), {"train.lr": 1e-3})]
    assert keys == ["train.w_adv", "train.w_con", "train.w_lat", "eval.score_lambda"]
    improved = [d.key for d in default_space(build_config({}), {})]
    assert "eval.score_lambda" not in improved and "train.w_rot" in improved  # score terms: no Eq. 5 lambda
    ganomaly = [d.key for d in default_space(build_config({"model.name": "ganomaly"}), {})]
    assert "eval.score_lambda" not in ganomaly  # lambda 0: the latent distance alone


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train.w_con=1", "expected KEY=LOW:HIGH"),
        ("train.w_con=5:1", "LOW < HIGH"),
        ("train.w_con=0:1:log", "LOW > 0"),
        ("eval.score_lambda=0:2", "lies in [0, 1]"),
        ("train.nothing=1:2", "not a setting"),
    ],
)
def test_parse_search_refuses_with_one_line(text, needle):
    with pytest.raises(UserError) as caught:
        parse_search(text)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_missing_optuna_is_one_line(tmp_path, monkeypatch, capsys):
    from skipganomaly.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["tune", "--trials", "1", "--output", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'skipganomaly[tune]'" in err
    assert not Path(tmp_path / "t").exists()


def test_the_command_line_imports_without_optuna():
    code = "import sys, skipganomaly.cli; skipganomaly.cli.build_parser(); assert 'optuna' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_selection_that_is_no_auroc_is_refused_before_training(tmp_path):
    result = run_cli(
        "tune",
        "--trials",
        "1",
        "--protocol",
        "normal-only",
        "--set",
        "eval.selection_metric=loss",
        *TINY,
        "--output",
        tmp_path / "t",
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "normal-only tuning needs the synthetic validation" in result.stderr
    assert not (tmp_path / "t" / "trials").exists()  # nothing trained


def test_a_killed_process_s_trial_is_run_again(tmp_path):
    """A trial left running by a process that died is marked failed, and another takes its place."""
    import socket

    from skipganomaly.tuning.study import open_study

    user = {**TINY_USER, "data.abnormal_class": "1", "data.normal_class": None}
    space = search_space(build_config(user), user, ["train.w_con=1:100:log"])
    options = TuneOptions(output=tmp_path, user=user, space=space, trials=1, log=lambda _line: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = open_study(options).ask()
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", dead.pid)
    states = {t.number: t.state.name for t in tune(options).get_trials()}
    assert states == {0: "FAIL", 1: "COMPLETE"}

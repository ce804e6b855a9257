"""``reproduce --sweep``: parsing, the plan (one training per value, lambda rescored from the base
runs, the base value reused), the report and resuming."""

import csv
import json

import numpy as np
import pytest
from conftest import run_cli

from skipganomaly.report import ReproduceOptions
from skipganomaly.report.sweep import make_sweep_plan, parse_sweep, parse_sweeps
from skipganomaly.scoring.metrics import auroc
from skipganomaly.specs.errors import UserError

TINY = ["--image-size", "16", "--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "model.nz=8"]
SWEEP = [
    "reproduce",
    "--classes",
    "0",
    "--seeds",
    "0",
    "1",
    "--epochs",
    "1",
    "--preset",
    "paper",
    "--sweep",
    "train.w_con=1,40",
    "--sweep",
    "eval.score_lambda=0,0.5,0.9",
    "--quiet",
]


def test_parse_sweep_reads_values_as_the_setting_s():
    axis = parse_sweep("train.w_con=1,10, 40")
    assert axis.key == "train.w_con" and axis.values == (1, 10, 40) and not axis.rescored
    assert parse_sweep("eval.score_lambda=0.1,0.9").rescored


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model.w_con=1,40", "did you mean train.w_con"),
        ("eval.score_lambda=0.5,1.5", "lies in [0, 1]"),
        ("train.w_con=1,1", "listed twice"),
        ("train.w_con=1,,2", "empty value"),
        ("train.w_con", "expected KEY=V1,V2"),
    ],
)
def test_parse_sweep_refuses_with_one_line(text, needle):
    with pytest.raises(UserError, match=None) as caught:
        parse_sweep(text)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_the_same_key_twice_is_refused():
    with pytest.raises(UserError, match="given twice"):
        parse_sweeps(["train.w_con=1,2", "train.w_con=3"])


def test_plan_trains_each_value_once_and_reuses_the_base(tmp_path):
    options = ReproduceOptions(
        output=tmp_path, classes=["0", "1"], seeds=[0, 1], user={"train.preset": "paper", "train.epochs": 1}
    )
    axes = parse_sweeps(["train.w_con=1,40,100", "eval.score_lambda=0.5,0.9"])
    plan = make_sweep_plan(options, axes)
    # 2 classes x 2 seeds per trained value; w_con 40 is the paper preset's own: the base runs.
    assert len(plan.runs) == 3 * 4
    by_value = {(p.axis.key, p.value): p.runs for p in plan.points}
    assert by_value[("train.w_con", 40)] == plan.base.runs
    assert by_value[("eval.score_lambda", 0.5)] == plan.base.runs
    assert {s.config.train.w_con for s in by_value[("train.w_con", 100)]} == {100}
    assert all(
        "train.w_con_100" in str(s.run_dir) and s.tag == "train.w_con=100"
        for s in by_value[("train.w_con", 100)]
    )
    assert {s.config.eval.score_lambda for s in plan.runs} == {0.9}  # lambda never trains


def test_a_swept_key_also_set_or_lambda_with_score_terms_is_refused(tmp_path):
    options = ReproduceOptions(output=tmp_path, classes=["0"], user={"train.w_con": 10})
    with pytest.raises(UserError, match="also set"):
        make_sweep_plan(options, parse_sweeps(["train.w_con=1,2"]))
    improved = ReproduceOptions(output=tmp_path, classes=["0"], user={"train.preset": "improved"})
    with pytest.raises(UserError, match="score_terms"):
        make_sweep_plan(improved, parse_sweeps(["eval.score_lambda=0.5,0.9"]))


def test_sweep_writes_the_figure_rescored_lambda_and_resumes(tmp_path):
    output = tmp_path / "sweep"
    first = run_cli(*SWEEP, *TINY, "--output", output)
    assert first.returncode == 0, first.stderr
    assert "4 trainings: 4 trained" in first.stdout
    for name in ("results.csv", "summary.json", "report.md", "report.html", "figures/sweep-train.w_con.png"):
        assert (output / name).is_file(), name
    rows = list(csv.DictReader((output / "results.csv").open()))
    # Trained axis: both protocols side by side, from the same trainings.
    assert {(r["value"], r["protocol"]) for r in rows if r["key"] == "train.w_con"} == {
        (v, p) for v in ("1", "40") for p in ("val-split", "paper")
    }
    # lambda 0.9 is the runs' own: rescoring gives their own test AUROC back.
    base = {
        r["seed"]: float(r["auroc"])
        for r in rows
        if r["key"] == "train.w_con" and r["value"] == "40" and r["protocol"] == "val-split"
    }
    own = {
        r["seed"]: float(r["auroc"]) for r in rows if r["key"] == "eval.score_lambda" and r["value"] == "0.9"
    }
    assert own.keys() == base.keys() and all(abs(own[s] - base[s]) < 1e-4 for s in own)
    # lambda 0 is the latent distance alone, as scores.csv holds it.
    run_dir = output / next(
        r["run_dir"] for r in rows if r["key"] == "eval.score_lambda" and r["seed"] == "0"
    )
    test = [r for r in csv.DictReader((run_dir / "scores.csv").open()) if r["split"] == "test"]
    latent_auroc = auroc(
        np.array([int(r["label"]) for r in test]), np.array([float(r["latent"]) for r in test])
    )
    zero = next(
        float(r["auroc"])
        for r in rows
        if r["key"] == "eval.score_lambda" and r["value"] == "0" and r["seed"] == "0"
    )
    assert zero == pytest.approx(latent_auroc, abs=1e-6)
    summary = json.loads((output / "summary.json").read_text())
    assert [a["key"] for a in summary["axes"]] == ["train.w_con", "eval.score_lambda"]
    assert "paper" not in summary["axes"][1]["protocols"]  # no per-image parts of the paper protocol
    assert "![train.w_con](figures/sweep-train.w_con.png)" in (output / "report.md").read_text()
    assert "data:image/png;base64," in (output / "report.html").read_text()
    # Rerun: nothing trains again and the figures are the same.
    again = run_cli(*SWEEP, *TINY, "--output", output)
    assert again.returncode == 0, again.stderr
    assert "0 trained, 0 resumed, 4 already finished" in again.stdout
    assert list(csv.DictReader((output / "results.csv").open())) == rows


def test_a_bad_sweep_is_one_line_exit_2(tmp_path):
    result = run_cli("reproduce", "--sweep", "train.w_con=a,b", "--output", tmp_path / "x")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--sweep" in result.stderr

"""``reproduce``: runs per class x seed, resumable, with results, summary and a self-contained report."""

import base64
import csv
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import labelled_source
from fixture_data import write_cifar_python, write_mvtec

from skipganomaly.data import READERS
from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.models import MODELS, SkipGANomaly
from skipganomaly.report import ReproduceOptions, make_plan, resolve_profile, run_plan
from skipganomaly.report.published import TABLE_I, is_table_i_classes, paper_class_name, table_i_order
from skipganomaly.report.render import markdown
from skipganomaly.report.results import collect_rows, summarize
from skipganomaly.report.runner import run_state, training_protocols, values_for_model
from skipganomaly.specs.errors import UserError
from skipganomaly.specs.models import MODEL_SPECS
from skipganomaly.training.trainer import Trainer

TINY = ["--image-size", "16", "--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "model.nz=8"]
REPRODUCE = ["reproduce", "--dataset", "digits", "--classes", "0", "1", "--seeds", "0", "1", "--epochs", "1"]
REPORT_FILES = ("results.csv", "summary.json", "report.md", "report.html")


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "skipganomaly", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    output = tmp_path_factory.mktemp("reproduce") / "out"
    result = cli(*REPRODUCE, *TINY, "--output", output, "--quiet")
    assert result.returncode == 0, result.stderr
    return output, result


def _rows(output: Path) -> list[dict]:
    return list(csv.DictReader((output / "results.csv").open()))


def test_reproduce_writes_every_file(reproduced):
    output, result = reproduced
    for name in REPORT_FILES:
        assert (output / name).is_file(), name
    run_dirs = sorted((output / "runs" / "skipganomaly").iterdir())
    assert [d.name for d in run_dirs] == [f"val-split-abnormal-{c}-seed{s}" for c in (0, 1) for s in (0, 1)]
    for run in run_dirs:
        for name in (
            "config.yaml",
            "metrics.json",
            "scores.csv",
            "log.jsonl",
            "examples.npz",
            "checkpoints/best.pt",
        ):
            assert (run / name).is_file(), (run, name)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["classes"] == ["0", "1"] and summary["seeds"] == [0, 1]
    assert summary["protocols"] == ["val-split", "paper"]
    assert summary["profile"]["name"] == "light"
    assert summary["config"]["train"]["epochs"] == 1 and summary["config"]["model"]["ngf"] == 4
    figures = {Path(f).name for f in summary["figures"]}
    assert {"fig4_auroc_bars.png", "fig5_histograms.png", "fig6_tsne.png", "roc_curves.png"} <= figures
    assert {
        "fig7_examples_0.png",
        "fig7_examples_1.png",
        "training_auroc.png",
        "training_losses.png",
    } <= figures
    for name in figures:
        assert (output / "figures" / name).read_bytes().startswith(b"\x89PNG")
    assert "Skip-GANomaly, ours, val-split (honest)" in result.stdout
    assert "4 trained, 0 resumed, 0 already finished" in result.stdout


def test_results_rows_come_from_the_runs(reproduced):
    output, _ = reproduced
    rows = _rows(output)
    assert len(rows) == 2 * 2 * 2  # classes x seeds x protocols, one training each
    for row in rows:
        metrics = json.loads((output / row["run_dir"] / "metrics.json").read_text())
        if row["protocol"] == "val-split":
            assert float(row["auroc"]) == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
            assert float(row["f1"]) == pytest.approx(metrics["test"]["f1"], abs=1e-6)
            assert row["optimistic"] == "0"
        else:
            assert row["protocol"] == "paper" and row["optimistic"] == "1"
            assert float(row["auroc"]) == pytest.approx(metrics["paper_protocol"]["auroc"], abs=1e-6)
            assert int(row["epoch_best"]) == metrics["paper_protocol"]["epoch"]
        assert row["trained_with"] == "val-split" and int(row["epochs"]) == 1
    summary = json.loads((output / "summary.json").read_text())
    for protocol in ("val-split", "paper"):
        entry = summary["table"]["skipganomaly"][protocol]
        for name in ("0", "1"):
            values = [float(r["auroc"]) for r in rows if r["protocol"] == protocol and r["class"] == name]
            assert entry["per_class"][name]["mean"] == pytest.approx(np.mean(values), abs=1e-6)
            assert entry["per_class"][name]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
        per_seed = [
            np.mean([float(r["auroc"]) for r in rows if r["protocol"] == protocol and r["seed"] == str(s)])
            for s in (0, 1)
        ]
        assert entry["overall"]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-6)
        assert entry["overall"]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-6)
    assert summary["published"] is None  # digits: Table I is shown apart, as another data set's


def test_html_is_self_contained(reproduced):
    output, _ = reproduced
    text = (output / "report.html").read_text()
    # Outside the embedded images (whose base64 may hold any letters), no address of any kind.
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"https?:|ftp:|www\.|//[a-z0-9]", outside, re.IGNORECASE)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", outside, re.IGNORECASE)
    sources = re.findall(r'src="([^"]*)"', text)
    summary = json.loads((output / "summary.json").read_text())
    assert len(sources) == len(summary["figures"])
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "OPTIMISTIC" in text and "LIGHT profile" in text
    markdown = (output / "report.md").read_text()
    assert "| Skip-GANomaly, ours, val-split (honest) |" in markdown
    assert "*Skip-GANomaly, ours, paper protocol (OPTIMISTIC)*" in markdown


def test_rerun_skips_finished_runs_and_gives_the_same_table(reproduced):
    output, first = reproduced
    before = {name: (output / name).read_text() for name in ("results.csv", "summary.json")}
    stamps = {p: p.stat().st_mtime_ns for p in output.glob("runs/*/*/metrics.json")}
    again = cli(*REPRODUCE, *TINY, "--output", output, "--quiet")
    assert again.returncode == 0, again.stderr
    assert "0 trained, 0 resumed, 4 already finished" in again.stdout
    assert {name: (output / name).read_text() for name in before} == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # The printed table is the same too (after the lines of runs trained, before counts and time).
    def table(stdout):
        return [line for line in stdout.splitlines() if not line.startswith(("[", "writing the report"))][:-2]

    # The profile note and Table I's header and 3 rows; then any shortcut warnings, the same too.
    printed = table(first.stdout)
    assert table(again.stdout) == printed and len(printed) >= 5
    assert printed[1].split()[:3] == ["0", "1", "mean"]


def test_other_settings_in_the_same_output_are_refused(reproduced):
    output, _ = reproduced
    user = {"data.image_size": 16, "model.ngf": 4, "model.ndf": 4, "model.nz": 8, "train.epochs": 2}
    plan = make_plan(ReproduceOptions(output=output, classes=["0", "1"], seeds=[0, 1], user=user))
    with pytest.raises(UserError, match=r"was made with train.epochs=1, not 2; repeat the original settings"):
        run_plan(plan, progress=False, log=lambda s: None)
    assert json.loads((plan.runs[0].run_dir / "metrics.json").read_text())["epochs"] == 1  # untouched


@pytest.fixture
def synthetic_dataset(monkeypatch):
    """A class-labelled data set registered the way the data readers are."""
    source = labelled_source()
    monkeypatch.setitem(READERS, "synthetic", lambda cfg: source)
    return source


def _tiny_options(output, **changes):
    values = {
        "output": output,
        "dataset": "synthetic",
        "classes": ["noise"],
        "seeds": [0],
        "profile": "faithful",
        "user": {
            "data.image_size": 16,
            "data.batch_size": 16,
            "model.ngf": 4,
            "model.ndf": 4,
            "model.nz": 8,
            "train.epochs": 2,
            "train.device": "cpu",
            "train.threads": 2,  # one thread count: resumed runs equal uninterrupted ones bit for bit
        },
    }
    values.update(changes)
    return ReproduceOptions(**values)


def test_an_interrupted_run_is_resumed_to_the_same_weights(tmp_path, synthetic_dataset):
    from skipganomaly.data import prepare_data

    class Interrupt(Exception):
        pass

    # Interrupt the planned run after its first epoch, as a killed process would leave it.
    plan = make_plan(_tiny_options(tmp_path / "cut"))
    spec = plan.runs[0]
    trainer = Trainer(
        spec.config, prepare_data(spec.config.data), spec.run_dir, log=lambda s: None, progress=False
    )

    def stop(_trainer, epoch):
        raise Interrupt

    trainer.callbacks.append(stop)
    with pytest.raises(Interrupt):
        trainer.fit()
    assert run_state(spec) == "interrupted"
    counts = run_plan(plan, progress=False, log=lambda s: None)
    assert counts == {"trained": 0, "resumed": 1, "skipped": 0}
    whole = make_plan(_tiny_options(tmp_path / "whole"))
    assert run_plan(whole, progress=False, log=lambda s: None) == {"trained": 1, "resumed": 0, "skipped": 0}
    resumed = load_checkpoint(checkpoint_path(spec.run_dir, "last")).state_dict
    uninterrupted = load_checkpoint(checkpoint_path(whole.runs[0].run_dir, "last")).state_dict
    # Exact: resumption repeats the uninterrupted run's code path (same process and threads).
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    rows, whole_rows = collect_rows(plan), collect_rows(whole)
    assert [r["auroc"] for r in rows] == [r["auroc"] for r in whole_rows] and len(rows) == 2
    assert run_plan(plan, progress=False, log=lambda s: None) == {"trained": 0, "resumed": 0, "skipped": 1}


def test_registered_models_and_protocols_plug_in(tmp_path, synthetic_dataset, monkeypatch):
    class Variant(SkipGANomaly):
        name = "variant"

    monkeypatch.setitem(MODELS, "variant", Variant)  # a model registers its class and its spec
    faithful = {k: v for k, v in MODEL_SPECS["skipganomaly"].presets.items() if k != "improved"}
    variant = dataclasses.replace(  # the faithful model under another name: no own keys
        MODEL_SPECS["skipganomaly"], name="variant", display_name="variant", presets=faithful,
        own_keys=(), check=None, default_preset="reference",
    )  # fmt: skip
    monkeypatch.setitem(MODEL_SPECS, "variant", variant)
    options = _tiny_options(
        tmp_path / "out",
        models=["skipganomaly", "variant"],
        protocols=["normal-only", "paper"],
        user=_tiny_options(tmp_path).user | {"train.epochs": 1},
    )
    plan = make_plan(options)
    assert run_plan(plan, progress=False, log=lambda s: None)["trained"] == 2
    rows = collect_rows(plan)
    assert {(r["model"], r["protocol"], r["trained_with"]) for r in rows} == {
        ("skipganomaly", "normal-only", "normal-only"),
        ("skipganomaly", "paper", "normal-only"),
        ("variant", "normal-only", "normal-only"),
        ("variant", "paper", "normal-only"),
    }
    summary = summarize(plan, rows)
    assert list(summary["table"]) == ["skipganomaly", "variant"]
    assert summary["classes"] == ["noise"]
    assert "| variant, ours, normal-only (honest) |" in markdown(summary, rows, [])


def test_cifar10_gets_table_i_columns_and_the_published_rows(tmp_path):
    root = write_cifar_python(tmp_path / "cifar", per_class_batch=2, per_class_test=3)
    options = _tiny_options(
        tmp_path / "out",
        dataset="cifar10",
        classes=["automobile", "airplane"],
        user=_tiny_options(tmp_path).user | {"data.root": str(root), "train.epochs": 1},
    )
    plan = make_plan(options)
    assert [s.class_name for s in plan.runs] == ["airplane", "automobile"]  # the data set's order
    run_plan(plan, progress=False, log=lambda s: None)
    rows = collect_rows(plan)
    summary = summarize(plan, rows)
    assert summary["classes"] == ["car", "plane"]  # Table I's names and order
    published = summary["published"]["rows"]["skipganomaly"]
    assert published["per_class"] == {"car": 0.953, "plane": 0.797}
    assert published["mean"] == pytest.approx((0.953 + 0.797) / 2)
    car = [r["auroc"] for r in rows if r["class"] == "automobile" and r["protocol"] == "val-split"]
    assert summary["table"]["skipganomaly"]["val-split"]["per_class"]["car"]["mean"] == pytest.approx(car[0])
    text = markdown(summary, rows, [])
    assert "| *Skip-GANomaly (Proposed), published (Table I, OPTIMISTIC)* | 0.953 | 0.797 | 0.875 |" in text
    assert "| *AnoGAN [9], published (Table I, OPTIMISTIC)* | 0.492 | 0.516 | 0.504 |" in text
    assert "as published (CIFAR-10, a different data set" not in text


def test_a_data_set_with_its_own_split_runs_once_per_seed(tmp_path):
    category = write_mvtec(tmp_path / "widget")
    options = _tiny_options(
        tmp_path / "out",
        dataset="mvtec",
        classes=None,
        seeds=[0, 1],
        user=_tiny_options(tmp_path).user | {"data.root": str(category), "train.epochs": 1},
    )
    plan = make_plan(options)
    assert [(s.class_name, s.seed, s.run_dir.name) for s in plan.runs] == [
        (None, 0, "val-split-seed0"),
        (None, 1, "val-split-seed1"),
    ]
    run_plan(plan, progress=False, log=lambda s: None)
    summary = summarize(plan, collect_rows(plan))
    assert summary["classes"] == ["mvtec"] and summary["setting"] == "own split"
    assert summary["table"]["skipganomaly"]["paper"]["per_class"]["mvtec"]["n"] == 2
    with pytest.raises(UserError, match="drop --classes"):
        make_plan(_tiny_options(tmp_path / "x", dataset="mvtec", classes=["crack"], user=options.user))


def test_model_specific_settings_go_to_their_models_only():
    base = {"model.latent_search_steps": 5, "train.w_con": 40.0, "model.ngf": 8}
    assert values_for_model(base, "anogan") == {"model.latent_search_steps": 5, "model.ngf": 8}
    assert values_for_model(base, "skipganomaly") == {"train.w_con": 40.0, "model.ngf": 8}
    assert values_for_model(base, "egbad") == {"model.ngf": 8}


def test_training_protocols():
    assert training_protocols(["val-split", "paper"]) == [("val-split", True)]
    assert training_protocols(["paper"]) == [("paper", False)]
    assert training_protocols(["paper", "normal-only", "val-split"]) == [
        ("val-split", True),
        ("normal-only", False),
    ]
    with pytest.raises(UserError, match="protocol 'honest' is unknown"):
        training_protocols(["honest"])


def test_profiles_and_their_overrides(tmp_path):
    assert resolve_profile("digits").name == "light"
    # reproduce reproduces the paper: the faithful model, not train's improved default.
    assert resolve_profile("digits", "faithful").overrides == {"train.preset": "reference"}
    assert resolve_profile("cifar10").name == "faithful"
    assert resolve_profile("cifar10", "light").overrides["model.ngf"] == 16
    with pytest.raises(UserError, match="no light profile"):
        resolve_profile("mnist", "light")
    # Settings that change what is trained are named in the note the report puts at its top; a
    # reduced width is never passed off as the faithful settings.
    faithful = make_plan(ReproduceOptions(output=tmp_path, classes=["3"], profile="faithful"))
    assert faithful.settings_changed == {} and "changed here" not in faithful.profile_note
    narrowed = ReproduceOptions(
        output=tmp_path, classes=["3"], profile="faithful", user={"model.ngf": 16, "data.workers": 2}
    )
    assert make_plan(narrowed).profile_note.endswith("(changed here: model.ngf=16)")
    improved = ReproduceOptions(
        output=tmp_path, classes=["3"], profile="faithful", user={"train.preset": "improved"}
    )
    improved_plan = make_plan(improved)
    assert improved_plan.profile_note.endswith("(changed here: train.preset=improved)")
    assert improved_plan.runs[0].config.model.rotation_head
    plan = make_plan(ReproduceOptions(output=tmp_path, classes=["3"], user={"train.epochs": 2}))
    assert "changed here: train.epochs=2" in plan.profile_note
    config = plan.runs[0].config
    light = resolve_profile("digits").overrides
    assert config.data.image_size == light["data.image_size"] and config.model.ngf == light["model.ngf"]
    assert config.train.epochs == 2  # the user's value wins over the profile's
    assert config.data.abnormal_class == "3" and config.eval.paper_each_epoch
    with pytest.raises(UserError, match="choose one of: 0, 1"):
        make_plan(ReproduceOptions(output=tmp_path, classes=["cat"]))
    with pytest.raises(UserError, match="model 'nope' is unknown"):
        make_plan(ReproduceOptions(output=tmp_path, models=["nope"]))


def test_table_i_columns_for_cifar10_names():
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert is_table_i_classes(cifar) and not is_table_i_classes([str(d) for d in range(10)])
    ordered = [paper_class_name(n) for n in table_i_order(cifar)]
    assert ordered == list(TABLE_I["skipganomaly"])
    assert ordered[:2] == ["bird", "car"] and ordered[7] == "plane"


def test_reproduce_help():
    result = cli("reproduce", "--help")
    assert result.returncode == 0 and "--protocols" in result.stdout and "--profile" in result.stdout

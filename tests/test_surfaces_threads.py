"""Issue 22, one seed, one result: the default thread count comes from the machine (cores, cgroup
quota, OMP_NUM_THREADS), not its load; it is recorded in the run and a resume keeps it;
train.threads=auto follows the load as an opt-in."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, train_killed_then_resumed

from skipganomaly.benchmark.busy import BusyProcesses
from skipganomaly.runtime.threads import ThreadChooser, machine_thread_count, omp_thread_limit
from skipganomaly.specs.errors import UserError
from skipganomaly.training.runs import recorded_threads, resume_point, train_run

# The fixture `splits` (conftest) is the synthetic data set the training tests share.


def _weights(trained):
    return {k: v.clone() for k, v in trained.trainer.model.state_dict().items()}


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_count_is_the_machines_not_its_load():
    assert machine_thread_count(8, environ={}) == 8
    assert machine_thread_count(8, environ={"OMP_NUM_THREADS": "3"}) == 3
    assert machine_thread_count(2, environ={"OMP_NUM_THREADS": "16"}) == 2
    assert machine_thread_count(8, 2, environ={"OMP_NUM_THREADS": "6"}) == 3
    assert machine_thread_count(8, environ={"OMP_NUM_THREADS": "4,2"}) == 4  # a nested list: its first
    assert omp_thread_limit({"OMP_NUM_THREADS": "many"}) is None


def test_the_default_chooser_never_reads_the_load(monkeypatch, keep_threads):
    readings = []

    def sampler():
        readings.append(1)
        return None

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    chooser = ThreadChooser(0, sampler=sampler, sleep=lambda s: None)
    assert chooser.start() == 1 and not chooser.adaptive and readings == []
    assert not chooser.step_done(1.0) and readings == []
    assert "fixed from the machine" in chooser.describe() and "OMP_NUM_THREADS=1" in chooser.describe()
    assert ThreadChooser("auto", sampler=sampler, sleep=lambda s: None).adaptive


def test_train_threads_takes_a_number_or_auto():
    assert tiny_config(**{"train.threads": "auto"}).train.threads == "auto"
    assert tiny_config(**{"train.threads": 3}).train.threads == 3
    assert tiny_config().train.threads == 0
    with pytest.raises(UserError, match="train.threads='fast': use 0 .* or auto"):
        tiny_config(**{"train.threads": "fast"})


def test_two_default_runs_one_beside_a_busy_core_and_a_kill_and_resume_agree_bit_for_bit(
    tmp_path, splits, keep_threads
):
    from skipganomaly.training.trainer import Trainer

    config = tiny_config(**{"train.epochs": 3, "train.input_noise_std": 0.05})  # threads: the default
    quiet = Trainer(config, splits, tmp_path / "quiet", log=lambda s: None, progress=False)
    quiet.fit()
    with BusyProcesses(1, "spin"):  # the old default would take the free cores only
        busy = Trainer(config, splits, tmp_path / "busy", log=lambda s: None, progress=False)
        busy.fit()
        cut, resumed = train_killed_then_resumed(config, splits, tmp_path / "cut")
    assert (
        quiet.threads == busy.threads == cut.threads == resumed.threads == recorded_threads(tmp_path / "busy")
    )
    a = quiet.model.state_dict()
    for other in (busy, resumed):
        b = other.model.state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_a_resume_keeps_the_recorded_count_when_the_machine_changed(tmp_path, monkeypatch, keep_threads):
    config = tiny_config(**{"data.abnormal_class": "0", "train.epochs": 2})

    class Stop(Exception):
        pass

    def stop(trainer):
        trainer.callbacks.append(lambda _t, epoch: (_ for _ in ()).throw(Stop()) if epoch == 1 else None)

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with pytest.raises(Stop):
        train_run(config, tmp_path / "run", log=lambda s: None, progress=False, on_ready=stop)
    first = recorded_threads(tmp_path / "run")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the machine now says one thread
    checkpoint, stored, _ = resume_point(tmp_path / "run")
    assert stored.train.threads == 0
    resumed = train_run(stored, tmp_path / "run", resume=checkpoint, log=lambda s: None, progress=False)
    assert resumed.trainer.threads == first
    starts = [
        json.loads(line)
        for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
        if '"start"' in line
    ]
    assert [s["threads"] for s in starts] == [first, first]

"""How training picks its thread count and its precision: the rules, fed with mocked machines
(affinity masks, cgroup files, /proc/stat readings, probe timings). No timing happens here."""

import json
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import synthetic_splits, tiny_config

from skipganomaly.benchmark import BusyProcesses
from skipganomaly.runtime import cores, precision, threads
from skipganomaly.runtime.cores import CpuSample
from skipganomaly.runtime.threads import ThreadChooser, threads_for_load
from skipganomaly.training.trainer import Trainer


# --------------------------------------------------------------------------- available cores
def _machine(tmp_path: Path, cgroup_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /proc (self/cgroup) and /sys/fs/cgroup with ``files`` (relative path -> text)."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    cgroup.mkdir()
    for name, text in files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(text + "\n")
    return proc, cgroup


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize(
    "cgroup_line, files, limit, expected",
    [
        ("0::/", {"cpu.max": "max 100000"}, None, 8),  # v2, no quota
        ("0::/", {"cpu.max": "150000 100000"}, 1.5, 2),  # v2, 1.5 CPUs: rounded up
        ("0::/", {"cpu.max": "50000 100000"}, 0.5, 1),  # half a CPU: still one thread
        ("0::/job/step", {"cpu.max": "400000 100000", "job/cpu.max": "200000 100000",
                          "job/step/cpu.max": "max 100000"}, 2.0, 2),  # the tightest ancestor wins
        ("0::/elsewhere", {"cpu.max": "300000 100000"}, 3.0, 3),  # path not visible: the mount's own
        ("3:cpu,cpuacct:/docker/abc", {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000",
                                       "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 2.5, 3),  # v1
        ("3:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                             "cpu,cpuacct/cpu.cfs_period_us": "100000"}, None, 8),  # v1, no quota
        ("1:cpu:/", {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1.0, 1),
        ("0::/", {}, None, 8),  # no cpu controller files at all
    ],
)  # fmt: skip
def test_available_cores_is_the_affinity_mask_capped_by_the_cgroup_quota(
    tmp_path, eight_cpus, cgroup_line, files, limit, expected
):
    proc, cgroup = _machine(tmp_path, cgroup_line, files)
    assert cores.cgroup_cpu_limit(proc, cgroup) == (pytest.approx(limit) if limit is not None else None)
    assert cores.available_cores(proc, cgroup) == expected


def test_available_cores_follows_the_affinity_mask(tmp_path, monkeypatch):
    proc, cgroup = _machine(tmp_path, "0::/", {"cpu.max": "max 100000"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # taskset -c 3
    assert cores.available_cores(proc, cgroup) == 1


def test_no_proc_no_cgroup_means_the_affinity_mask(tmp_path, eight_cpus):
    assert cores.cgroup_cpu_limit(tmp_path / "none", tmp_path / "none") is None
    assert cores.available_cores(tmp_path / "none", tmp_path / "none") == 8
    assert cores.sample_cpu(tmp_path / "none") is None


# --------------------------------------------------------------------------- how busy the machine is
def _stat(tmp_path: Path, per_cpu: dict[int, tuple[int, int, int]]) -> Path:
    """/proc/stat with per-CPU (user, system, idle) ticks; iowait 7 and steal 3 on every CPU."""
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for cpu, (user, system, idle) in per_cpu.items():
        lines.append(f"cpu{cpu} {user} 0 {system} {idle} 7 0 0 3 0 0")
    lines += ["intr 1 2 3", "ctxt 100", "procs_running 3"]
    (proc / "stat").write_text("\n".join(lines) + "\n")
    return proc


def test_cpu_sample_reads_the_non_idle_time_of_our_cpus_only(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: 100)  # USER_HZ
    proc = _stat(tmp_path, {0: (100, 50, 1000), 1: (200, 0, 900), 2: (5000, 5000, 0)})
    sample = cores.sample_cpu(proc, cpus={0, 1})
    # cpu0: 100 + 50 + steal 3 = 153 ticks, cpu1: 200 + 3 = 203 ticks; idle and iowait excluded;
    # cpu2 is outside the affinity mask.
    assert sample.busy == pytest.approx((153 + 203) / 100)
    assert cores.sample_cpu(proc, cpus={7}) is None


def test_cores_busy_with_other_work_subtracts_our_own_time():
    before = CpuSample(wall=10.0, busy=100.0, own=5.0)
    # 4 s of wall time, 7 CPU-seconds spent on our CPUs, 3 of them by this process: others 1 core.
    after = CpuSample(wall=14.0, busy=107.0, own=8.0)
    assert cores.cores_busy_with_other_work(before, after) == pytest.approx(1.0)
    idle = CpuSample(wall=14.0, busy=103.0, own=8.0)  # only our own work (tick rounding: not < 0)
    assert cores.cores_busy_with_other_work(before, idle) == 0.0
    assert cores.cores_busy_with_other_work(after, after) == 0.0  # no time passed


@pytest.mark.parametrize(
    "available, others, free, candidates",
    [
        (2, 0.0, 2, [2]),  # quiet: all cores, nothing to compare
        (2, 0.2, 2, [2]),  # light background work leaves more than FREE_SHARE of a core
        (2, 0.3, 1, [1, 2]),  # a core less than 3/4 idle is not free: compare 1 and 2 threads
        (2, 1.0, 1, [1, 2]),  # one core busy (the case)
        (2, 6.0, 1, [1, 2]),  # oversubscribed: never fewer than one
        (1, 3.0, 1, [1]),
        (8, 1.0, 7, [7, 8]),
        (8, 3.4, 4, [4, 8]),
        (8, 0.0, 8, [8]),
    ],
)
def test_free_cores_and_the_counts_worth_comparing(available, others, free, candidates):
    assert threads_for_load(available, others) == free
    assert threads.thread_candidates(available, others) == candidates


def test_fastest_thread_count_by_median_with_ties_to_fewer_threads():
    assert threads.fastest_thread_count({1: [1.0, 1.1, 0.9], 2: [0.6, 0.7, 5.0]}) == 2  # one outlier
    assert threads.fastest_thread_count({1: [0.5, 0.5, 0.5], 2: [0.6, 0.6, 0.6]}) == 1
    assert threads.fastest_thread_count({1: [1.0, 1.0, 1.0], 2: [0.98, 0.98, 0.98]}) == 1  # a tie
    assert threads.fastest_thread_count({4: [2.0], 8: [1.0]}) == 8


class FakeMachine:
    """A /proc/stat reader and clock: ``others`` cores kept busy by other processes."""

    def __init__(self):
        self.clock, self.busy, self.own, self.others = 100.0, 0.0, 0.0, 0.0
        self.readings = 0

    def advance(self, seconds: float, own_cores: float = 0.0) -> None:
        self.clock += seconds
        self.busy += seconds * (self.others + own_cores)
        self.own += seconds * own_cores

    def sample(self) -> CpuSample:
        self.readings += 1
        return CpuSample(wall=self.clock, busy=self.busy, own=self.own)


@pytest.fixture
def two_free_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    return _machine(tmp_path, "0::/", {"cpu.max": "max 100000"})


def _chooser(two_free_cores, machine, **kwargs):
    """A chooser on the fake machine; following the load (train.threads=auto) unless told."""
    kwargs.setdefault("requested", "auto")
    proc, cgroup = two_free_cores
    return ThreadChooser(
        proc=proc, cgroup=cgroup, sampler=machine.sample, sleep=machine.advance, clock=lambda: machine.clock,
        interval_s=10.0, retrial_s=120.0, trial_steps=3, probe_s=0.25, **kwargs,
    )  # fmt: skip


def _train(chooser, machine, step_s: dict[int, float], steps: int) -> list[int]:
    """Run ``steps`` steps that take ``step_s[threads]`` each; the counts they ran at."""
    counts = []
    for _ in range(steps):
        counts.append(chooser.threads)
        assert torch.get_num_threads() == chooser.threads
        seconds = step_s[chooser.threads]
        machine.advance(seconds, own_cores=chooser.threads)
        chooser.step_done(seconds)
    return counts


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_chooser_compares_counts_on_a_busy_machine_and_keeps_the_faster(two_free_cores, keep_threads):
    machine = FakeMachine()
    machine.others = 1.0  # another process spins one core
    chooser = _chooser(two_free_cores, machine)
    assert chooser.start() == 1 and chooser.trial == {1: [], 2: []}
    assert chooser.others == pytest.approx(1.0)
    assert "1 and 2 threads compared over the first steps (2 cores available, 1.0 busy" in chooser.describe()
    # Each count's first step warms up and is not counted; then the counts alternate.
    counts = _train(chooser, machine, {1: 1.0, 2: 0.7}, 8)
    assert counts == [1, 2, 1, 2, 1, 2, 1, 2] and chooser.trial is None and chooser.threads == 2
    assert chooser.decisions == [{"from": 2, "to": 2, "others": 1.0, "step_s": {1: 1.0, 2: 0.7}}]
    assert "2 threads (2 cores available, 1.0 busy" in chooser.describe()
    # The same load later: the comparison stands until retrial_s has passed.
    assert set(_train(chooser, machine, {1: 1.0, 2: 0.7}, 40)) == {2}
    assert len(chooser.decisions) == 1
    # A collapse (2 threads now much slower): the next comparison, after retrial_s, finds it.
    counts = _train(chooser, machine, {1: 1.0, 2: 4.0}, 200)
    assert counts[-1] == 1 and chooser.decisions[-1]["to"] == 1


def test_thread_chooser_takes_all_cores_when_the_machine_quietens(two_free_cores, keep_threads):
    machine = FakeMachine()
    machine.others = 1.0
    chooser = _chooser(two_free_cores, machine)
    chooser.start()
    _train(chooser, machine, {1: 0.5, 2: 1.0}, 8)  # 2 threads lose: 1 kept
    assert chooser.threads == 1 and chooser.trial is None
    readings = machine.readings
    _train(chooser, machine, {1: 0.5, 2: 1.0}, 5)  # 2.5 s: too early to read the load again
    assert machine.readings == readings
    machine.others = 0.0  # the other process ended
    counts = _train(chooser, machine, {1: 0.5, 2: 0.3}, 60)
    assert counts[-1] == 2 and chooser.decisions[-1]["from"] == 1 and chooser.decisions[-1]["others"] < 0.25
    torch.set_num_threads(1)  # someone else (the benchmark's plain mode) changed it
    assert chooser.apply() == 2 and torch.get_num_threads() == 2


def test_thread_chooser_on_a_quiet_machine_never_compares(two_free_cores, keep_threads):
    machine = FakeMachine()
    chooser = _chooser(two_free_cores, machine)
    assert chooser.start() == 2 and chooser.trial is None
    assert set(_train(chooser, machine, {1: 0.1, 2: 0.5}, 100)) == {2} and chooser.decisions == []


def test_thread_chooser_fixed_counts_never_measure(two_free_cores, keep_threads):
    machine = FakeMachine()
    fixed = _chooser(two_free_cores, machine, requested=3)
    assert fixed.start() == 3 and fixed.describe() == "3 threads (as set)"
    proc, cgroup = two_free_cores
    shared = ThreadChooser(0, 2, proc=proc, cgroup=cgroup, sampler=machine.sample, sleep=machine.advance)
    assert shared.start() == 1  # two torchrun processes on two cores
    machine.advance(60)
    assert not fixed.step_done(1.0) and not shared.step_done(1.0) and machine.readings == 0


def test_thread_chooser_without_proc_keeps_the_available_cores(two_free_cores, keep_threads):
    proc, cgroup = two_free_cores
    chooser = ThreadChooser(proc=proc, cgroup=cgroup, sampler=lambda: None, sleep=lambda s: None)
    assert chooser.start() == 2 and not chooser.step_done(1.0)


# --------------------------------------------------------------------------- precision
def test_decide_precision_keeps_bf16_only_when_it_is_clearly_faster():
    assert precision.decide_precision({"fp32": [1.0, 1.1, 0.9], "bf16": [0.5, 0.6, 0.4]}) == "bf16"
    assert (
        precision.decide_precision({"fp32": [1.0, 1.0, 1.0], "bf16": [0.97, 0.96, 0.98]}) == "fp32"
    )  # a tie
    assert precision.decide_precision({"fp32": [1.0], "bf16": [5.0]}) == "fp32"  # emulated bf16
    assert precision.decide_precision({"fp32": [1.0, 1.0, 1.0], "bf16": [0.5, 9.0, 0.5]}) == "bf16"  # medians
    assert precision.decide_precision({"fp32": [1.0], "bf16": []}) == "fp32"


def test_probe_warms_up_interleaves_and_stops_once_bf16_clearly_loses():
    calls = []

    def step_times(costs):
        def run(name):
            calls.append(name)
            return costs[name]

        return run

    times = precision.probe_precisions(step_times({"fp32": 1.0, "bf16": 0.6}), rounds=3)
    assert calls == ["fp32", "bf16"] * 4  # one warm-up step each, then 3 interleaved rounds
    assert times == {"fp32": [1.0] * 3, "bf16": [0.6] * 3}
    calls.clear()
    times = precision.probe_precisions(step_times({"fp32": 1.0, "bf16": 4.0}), rounds=3)
    assert calls == ["fp32", "bf16"] * 2 and times == {"fp32": [1.0], "bf16": [4.0]}


def test_choose_precision_rules_probe_and_cache(tmp_path):
    cpu = torch.device("cpu")
    cache = tmp_path / "precision.json"
    probes = []

    def probe():
        probes.append(1)
        return {"fp32": [1.0, 1.0, 1.0], "bf16": [0.4, 0.5, 0.45]}

    fields = {"cpu": "Test CPU", "torch": "2.x", "model": "skipganomaly", "batch": 64, "threads": 2}
    assert precision.choose_precision("fp32", cpu, probe=probe, cache=cache).name == "fp32"
    assert precision.choose_precision("bf16", cpu, probe=probe, cache=cache).dtype is torch.bfloat16
    emulated = precision.choose_precision(
        "auto", cpu, probe=probe, fields=fields, cache=cache, native_bf16=lambda: False
    )
    assert emulated.name == "fp32" and emulated.source == "rule" and "no native bf16" in emulated.reason
    assert probes == [] and not cache.exists()  # emulated bf16 is never probed

    native = precision.choose_precision(
        "auto", cpu, probe=probe, fields=fields, cache=cache, native_bf16=lambda: True
    )
    assert (native.name, native.source, native.dtype) == ("bf16", "probe", torch.bfloat16)
    assert native.step_s == {"fp32": 1.0, "bf16": 0.45}
    assert "bf16 450 ms/step" in native.describe() and "measured now" in native.describe()
    again = precision.choose_precision(
        "auto", cpu, probe=probe, fields=fields, cache=cache, native_bf16=lambda: True
    )
    assert (again.name, again.source) == ("bf16", "cache") and probes == [1]  # measured once
    other = fields | {"threads": 1}  # another configuration is measured on its own
    precision.choose_precision("auto", cpu, probe=probe, fields=other, cache=cache, native_bf16=lambda: True)
    assert probes == [1, 1] and len(json.loads(cache.read_text())) == 2

    cache.write_text("{not json")  # a damaged cache only means measuring again
    assert (
        precision.choose_precision(
            "auto", cpu, probe=probe, fields=fields, cache=cache, native_bf16=lambda: True
        ).source
        == "probe"
    )


def test_trainer_probe_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """With native bf16 (mocked), precision auto measures both precisions on copies: the run's
    weights, optimiser state and random stream are those of a run that never probed."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("SKIPGANOMALY_CACHE", str(tmp_path / "cache"))  # no cached choice: measure
    splits = synthetic_splits(n_train=32)
    # One thread count: the cache is keyed by it, and the automatic one follows the machine's load.
    config = {"train.precision": "auto", "train.input_noise_std": 0.1, "train.threads": 1}
    probed = Trainer(tiny_config(**config), splits, tmp_path / "a", log=lambda s: None, progress=False)
    assert probed.precision.source == "probe" and set(probed.precision.step_s) == {"fp32", "bf16"}
    assert (tmp_path / "cache" / "runtime" / "precision.json").exists()
    fp32 = tiny_config(**config | {"train.precision": "fp32"})
    plain = Trainer(fp32, splits, tmp_path / "b", log=lambda s: None, progress=False)
    for (name, a), b in zip(
        probed.model.state_dict().items(), plain.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert all(not opt.state for opt in probed.optimizers.values())
    cached = Trainer(tiny_config(**config), splits, tmp_path / "c", log=lambda s: None, progress=False)
    assert cached.precision.source == "cache" and cached.precision.name == probed.precision.name


def test_trainer_probe_keeps_the_random_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("SKIPGANOMALY_CACHE", str(tmp_path / "cache"))  # no cached choice: measure
    splits = synthetic_splits(n_train=32)
    states = []
    for name in ("auto", "fp32"):
        Trainer(tiny_config(**{"train.precision": name}), splits, tmp_path / name, log=lambda s: None)
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])


# --------------------------------------------------------------------------- busy processes
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is gone too
        return handle.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
def test_busy_processes_run_beside_and_are_always_stopped():
    with BusyProcesses(2, "spin") as busy:
        pids = [p.pid for p in busy.processes]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    assert busy.processes == [] and not any(_alive(pid) for pid in pids)
    with pytest.raises(KeyError), BusyProcesses(1, "spin") as busy:
        pids = [p.pid for p in busy.processes]
        raise KeyError("the measurement failed")
    assert not any(_alive(pid) for pid in pids)


def test_busy_processes_end_on_their_own_after_their_time():
    with BusyProcesses(1, "spin", max_seconds=0.5) as busy:
        process = busy.processes[0]
        started = time.monotonic()
        process.wait(timeout=30)
        assert time.monotonic() - started < 30


# --------------------------------------------------------------------------- OpenMP's wait policy
@pytest.mark.parametrize(
    "code, env, policy, note",
    [
        ("import skipganomaly, torch", {}, "PASSIVE", ""),
        ("import torch, skipganomaly", {}, "default", "PyTorch was imported before skipganomaly"),
        (
            "import skipganomaly, torch",
            {"OMP_WAIT_POLICY": "active"},
            "ACTIVE",
            "OMP_WAIT_POLICY=ACTIVE was set",
        ),
    ],
)
def test_openmp_wait_policy_is_reported_as_it_took_effect(code, env, policy, note):
    import subprocess
    import sys

    script = f"{code}\nfrom skipganomaly.runtime.threads import openmp_wait_policy\nprint(repr(openmp_wait_policy()))"
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300
    )
    assert done.returncode == 0, done.stderr
    found_policy, found_note = eval(done.stdout.strip().splitlines()[-1])
    assert found_policy == policy and note in found_note


def test_benchmark_busy_reports_the_same_table_and_stops_its_processes(monkeypatch):
    import subprocess as sp

    from skipganomaly.benchmark import BenchmarkSettings, run_benchmark
    from skipganomaly.cli import main

    started = []
    popen = sp.Popen

    def recording_popen(*args, **kwargs):
        process = popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(sp, "Popen", recording_popen)
    settings = BenchmarkSettings(
        sizes=[16], batch_size=8, score_batch_size=16, steps=1, score_images=16, repeats=1, warmup=0,
        channels=1, ngf=4, ndf=4, nz=8, memory=False, device="cpu", busy=1,
    )  # fmt: skip
    report = run_benchmark(settings, log=lambda s: None)
    assert report["machine"]["busy"] == {"processes": 1, "kind": "spin"}
    [result] = report["results"]
    assert result["train_ratio"] > 0 and result["score_ratio"] > 0 and "native_bf16" in report["machine"]
    busy = [p for p in started if "-c" in p.args and "ready" in p.args[2]]
    assert len(busy) == 1 and busy[0].poll() is not None  # the busy process was stopped
    assert main(["benchmark", "--busy", "-1"]) == 2  # a user error, before any work

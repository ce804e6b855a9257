"""Reliability (docs/failure-behaviour.md): no user file is lost, no corrupt model is accepted,
and every failure is one line with exit code 2.

Each class of failure an outside campaign found gets cases here. Every case asserts the exit code,
that stderr has no traceback and ends in one ``error:`` line, and that no file outside the
command's own output changed (a snapshot of the test's folder, file by file, before and after).
The CLI runs in this process (``cli.main``, as the entry point calls it) so the file stays fast;
kills run a real subprocess killed with SIGKILL, full disks are simulated by a fixture that makes
writes under one folder fail with ENOSPC once a byte budget is spent (torch then reports its own
"enforce fail"), and a read-only file system is a real read-only mount where user namespaces
allow one.
"""

from __future__ import annotations

import builtins
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import traceback
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from conftest import TINY_CLI
from fixture_data import write_class_folders
from PIL import Image

from skipganomaly import cli

TRAIN = ["train", "--dataset", "digits", "--abnormal-class", "0", "--seed", "0", *TINY_CLI]


# --------------------------------------------------------------------------- helpers
class Result(NamedTuple):
    code: int | str
    out: str
    err: str


def run(capsys, *args) -> Result:
    """``skipganomaly ARGS`` in this process; an exception that escapes ``main`` (a traceback a
    user would see) is returned as exit code "traceback" with the traceback in ``err``."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - exactly what must not happen
        code = "traceback"
        print(traceback.format_exc(), file=sys.stderr)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit code 2, no traceback, and stderr ending in one ``error:`` sentence holding each
    fragment."""
    assert result.code == 2, (
        f"exit code {result.code!r}; stderr:\n{result.err[-3000:]}\nstdout:\n{result.out[-1000:]}"
    )
    assert "Traceback" not in result.err, result.err[-3000:]
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("error: ") and len(last) < 600, last
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in: {last}"


def assert_success(result: Result) -> None:
    assert result.code == 0, f"exit code {result.code!r}; stderr:\n{result.err[-3000:]}"
    assert "Traceback" not in result.err


def snapshot(root: Path, outputs: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every file below ``root`` (but under ``outputs``) with the SHA-256 of its content."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path == o or o in path.parents for o in outputs):
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@contextmanager
def unchanged_outside(root: Path, *outputs: Path):
    """Assert that no file below ``root`` outside ``outputs`` is added, removed or changed."""
    before = snapshot(root, outputs)
    yield
    after = snapshot(root, outputs)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files outside the output changed: {changed[:10]}"


def write_png(path: Path, size: int = 16, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG claiming ``width`` x ``height`` pixels in a few dozen bytes: a decompression bomb's
    header (Pillow checks the size before decoding, so the pixels need not be there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def images(folder: Path, n: int = 6) -> Path:
    for i in range(n):
        write_png(folder / f"img{i}.png", value=i)
    return folder


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


class FullDisk:
    """Writes to files below ``folder`` (whose names match ``names``) fail with ENOSPC once
    ``budget`` bytes were written, the last write cut short as on a real full disk. Patches
    ``open`` (builtins and io, which ``pathlib`` and ``os.fdopen`` use)."""

    def __init__(self, monkeypatch, folder: Path, budget: int, names: str = r".*"):
        self.folder = folder.resolve()
        self.budget = budget
        self.names = re.compile(names)
        self.used = 0
        self.failures = 0
        real_open = io.open

        def patched_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(m in mode for m in "wax+") and self._watched(file):
                return _Filling(handle, self)
            return handle

        monkeypatch.setattr(builtins, "open", patched_open)
        monkeypatch.setattr(io, "open", patched_open)

    def _watched(self, file) -> bool:
        try:
            path = (
                Path(os.readlink(f"/proc/self/fd/{file}")) if isinstance(file, int) else Path(file).resolve()
            )
        except OSError:
            return False
        return self.folder in path.parents and bool(self.names.search(path.name))


class _Filling:
    def __init__(self, handle, disk: FullDisk):
        self._handle = handle
        self._disk = disk

    def write(self, data):
        room = self._disk.budget - self._disk.used
        if len(data) > room:
            if room > 0:
                self._handle.write(data[:room])
                self._disk.used += room
            self._disk.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.used += len(data)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


# --------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (trained once for the module; tests copy it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main([*TRAIN, "--epochs", "1", "--output", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A two-epoch run killed with SIGKILL in a subprocess once its second epoch logged its first
    step: last.pt of epoch 1 on disk, and log lines of the epoch the kill cut off."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skipganomaly",
            *TRAIN,
            "--epochs",
            "2",
            "--set",
            "train.log_every=1",
            "--output",
            run_dir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log = run_dir / "log.jsonl"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if log.is_file() and '"event": "step", "epoch": 2' in log.read_text():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, (
        f"not killed in epoch 2: {process.stderr.read().decode()[-2000:]}"
    )
    process.stderr.close()
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    return run_dir


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


@pytest.fixture
def no_data(monkeypatch):
    """Fail loudly if a command reads its data set (a check that must come first did not)."""
    import skipganomaly.training.runs

    def refuse(*_args, **_kwargs):
        raise AssertionError("the data set was read before the output was checked")

    monkeypatch.setattr(skipganomaly.training.runs, "prepare_data", refuse)


# =========================================================================== data loss
def _user_files(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.yaml").write_text("my: own notes\n")
    (folder / "scores.csv").write_text("a,b\n1,2\n")


def _finished_without_last(folder: Path, finished: Path) -> None:
    shutil.copytree(finished, folder)
    (folder / "checkpoints" / "last.pt").unlink()


def _other_file(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")


def _another_runs_start(folder: Path, finished: Path) -> None:
    folder.mkdir()
    text = (finished / "config.yaml").read_text().replace("  seed: 0", "  seed: 7")
    assert text.count("  seed: 7") == 1  # train.seed
    (folder / "config.yaml").write_text(text)
    (folder / "log.jsonl").write_text('{"event": "start", "resumed_from_epoch": 0}\n')


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda folder, finished: _user_files(folder), "is not a run"),
        (_finished_without_last, "holds a finished run"),
        (lambda folder, finished: _other_file(folder), "notes.txt"),
        (_another_runs_start, "another run (train.seed=7, not 0)"),
    ],
    ids=["user-files", "finished-run-without-last-pt", "other-file", "another-runs-start"],
)
def test_train_never_writes_into_a_folder_that_is_not_its_own(
    make, fragment, finished_run, tmp_path, capsys, no_data
):
    folder = tmp_path / "out"
    make(folder, finished_run)
    with unchanged_outside(tmp_path):  # nothing at all: the folder is not the run's to write
        result = run(capsys, *TRAIN, "--epochs", "1", "--output", folder)
    assert_one_line_error(result, str(folder), fragment)
    assert "--output" in result.err


def test_train_starts_again_in_its_own_unfinished_start(finished_run, tmp_path, capsys):
    """A run killed in its first epoch (config.yaml, log lines, no checkpoint) is this run's own:
    the same command starts it again, dropping the cut epoch's log lines and temporary files."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(finished_run / "config.yaml", folder / "config.yaml")
    (folder / "log.jsonl").write_text(
        '{"event": "start", "resumed_from_epoch": 0}\n{"event": "step", "epoch": 1, "step": 1, "g": 1.0}\n{"event": "st'
    )
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / ".best.pt.a1b2c3d4.tmp").write_bytes(b"cut")
    with unchanged_outside(tmp_path, folder):
        result = run(capsys, *TRAIN, "--epochs", "1", "--output", folder)
    assert_success(result)
    records = log_records(folder)
    assert [r["event"] for r in records].count("start") == 1, records[:3]
    steps = [(r["epoch"], r["step"]) for r in records if r["event"] == "step"]
    assert len(steps) == len(set(steps)), "step lines of the killed start were kept"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("failure", ["bad-image", "disk-full"])
def test_predict_keeps_the_previous_csv_when_it_fails(failure, finished_run, tmp_path, capsys, monkeypatch):
    folder = images(tmp_path / "images")
    output = tmp_path / "out" / "pred.csv"
    output.parent.mkdir()
    output.write_text("path,score,is_anomalous\nold.png,0.5,0\n")
    previous = output.read_bytes()
    if failure == "bad-image":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        fragment = "broken.png"
    else:
        FullDisk(monkeypatch, output.parent, budget=200)  # the header and a row or two
        fragment = f"no space left on the device; free some space; {output} is unchanged"
    with unchanged_outside(tmp_path):
        result = run(
            capsys, "predict", "--run", finished_run, folder, "--output", output, "--batch-size", "2"
        )
    assert_one_line_error(result, fragment)
    assert output.read_bytes() == previous
    assert sorted(p.name for p in output.parent.iterdir()) == ["pred.csv"]  # no partial file left


def test_predict_streams_rows_into_a_partial_file_while_the_previous_csv_stays(
    finished_run, tmp_path, capsys, monkeypatch
):
    from skipganomaly.deploy.predict import Predictor

    folder = images(tmp_path / "images", n=6)
    output = tmp_path / "pred.csv"
    output.write_text("path,score,is_anomalous\nold.png,0.5,0\n")
    previous = output.read_bytes()
    partial = tmp_path / "pred.csv.partial"
    seen = []
    original = Predictor.score_paths

    def watching(self, *args, **kwargs):
        for item in original(self, *args, **kwargs):
            yield item  # the caller writes this batch before asking for the next one
            seen.append((partial.read_text().count("\n") if partial.is_file() else None, output.read_bytes()))

    monkeypatch.setattr(Predictor, "score_paths", watching)
    with unchanged_outside(tmp_path, output):
        result = run(
            capsys, "predict", "--run", finished_run, folder, "--output", output, "--batch-size", "2"
        )
    assert_success(result)
    assert [lines for lines, _ in seen] == [3, 5, 7], "rows did not appear in pred.csv.partial as scored"
    assert all(content == previous for _, content in seen), "the previous CSV changed before the run ended"
    assert len(list(csv.DictReader(output.open()))) == 6 and not partial.exists()


def test_test_writes_beside_the_training_record(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    record = run_dir / "metrics.json"
    with unchanged_outside(tmp_path, run_dir / "test-best.json"):
        result = run(capsys, "test", "--run", run_dir)
    assert_success(result)
    written = json.loads((run_dir / "test-best.json").read_text())
    assert (
        written["checkpoint"] == "best"
        and written["epoch_best"] == json.loads(record.read_text())["epoch_best"]
    )
    assert result.out.strip().splitlines()[-1] == f"wrote {run_dir / 'test-best.json'}"


def test_test_output_names_the_file_it_wrote(finished_run, tmp_path, capsys):
    output = tmp_path / "results" / "F.json"
    with unchanged_outside(tmp_path, output):
        result = run(capsys, "test", "--run", finished_run, "--output", output)
    assert_success(result)
    assert result.out.strip().splitlines()[-1] == f"wrote {output}"
    assert json.loads(output.read_text())["checkpoint"] == "best"


# =========================================================================== corrupt models
def _flip_weight_bytes(checkpoint: Path, count: int = 570) -> None:
    """Flip ``count`` bytes inside the largest weight tensor's stored bytes."""
    raw = torch.load(checkpoint, weights_only=True)
    name = max(raw["state_dict"], key=lambda k: raw["state_dict"][k].numel())
    data = bytes(raw["state_dict"][name].untyped_storage())  # as stored (channels_last or not)
    content = bytearray(checkpoint.read_bytes())
    start = content.find(data)
    assert start >= 0 and len(data) > count + 100
    for i in range(start + 50, start + 50 + count):
        content[i] ^= 0xFF
    checkpoint.write_bytes(bytes(content))


@pytest.mark.parametrize("verb", ["predict", "test"])
def test_a_checkpoint_with_flipped_bytes_is_refused(verb, finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    _flip_weight_bytes(run_dir / "checkpoints" / "best.pt")
    folder = images(tmp_path / "images")  # before the snapshot
    args = ["predict", "--run", run_dir, folder, "--output", tmp_path / "p.csv"] if verb == "predict" else []
    with unchanged_outside(tmp_path):
        result = run(capsys, *(args or ["test", "--run", run_dir]))
    assert_one_line_error(result, "best.pt is corrupt")


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    best = run_dir / "checkpoints" / "best.pt"
    raw = torch.load(best, weights_only=True)
    raw["model"]["args"]["ngf"] = 16  # the weights were made with ngf 8
    for key in ("content_hash", "state_hash"):  # as a file of 0.1.0 would be: no hash to catch it
        raw.pop(key, None)
    torch.save(raw, best)
    folder = images(tmp_path / "images")
    with unchanged_outside(tmp_path):
        result = run(capsys, "predict", "--run", run_dir, folder, "--output", tmp_path / "p.csv")
    assert_one_line_error(result, "does not fit its own model", "has shape")


def test_content_hash_rule_stored_verified_exposed_legacy_accepted(finished_run, tmp_path, capsys):
    """A new checkpoint stores its content hash (the one a deployment export will carry); a file
    without one (release 0.1.0) loads; a wrong one is refused."""
    from skipganomaly.formats.checkpoint import content_hash, load_checkpoint

    best = finished_run / "checkpoints" / "best.pt"
    raw = torch.load(best, weights_only=True)
    loaded = load_checkpoint(best)
    assert raw["content_hash"] == content_hash(raw) == loaded.content_hash == content_hash(loaded)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", loaded.content_hash)
    assert_success(run(capsys, "test", "--run", finished_run, "--output", tmp_path / "t.json"))
    assert json.loads((tmp_path / "t.json").read_text())["content_hash"] == loaded.content_hash
    legacy = load_checkpoint(Path(__file__).parent / "fixtures" / "checkpoint-v1.pt")  # no hash: accepted
    assert legacy.content_hash.startswith("sha256:")

    run_dir = copy_run(finished_run, tmp_path)
    raw["content_hash"] = "sha256:" + "0" * 64
    torch.save(raw, run_dir / "checkpoints" / "best.pt")
    folder = images(tmp_path / "images")
    with unchanged_outside(tmp_path):
        result = run(capsys, "predict", "--run", run_dir, folder, "--output", tmp_path / "p.csv")
    assert_one_line_error(result, "is corrupt")


def test_a_crafted_pickle_is_refused_without_suggesting_to_trust_it(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format": "skipganomaly.checkpoint", "x": Payload()}, run_dir / "checkpoints" / "best.pt")
    folder = images(tmp_path / "images")
    with unchanged_outside(tmp_path):
        result = run(capsys, "predict", "--run", run_dir, folder, "--output", tmp_path / "p.csv")
    assert_one_line_error(result, "is not a checkpoint this tool can load safely")
    assert "weights_only" not in result.err and not marker.exists()


# =========================================================================== one line, not a traceback
def _read_only_mount_available() -> bool:
    probe = (
        subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt && touch /mnt/x"],
            capture_output=True,
            text=True,
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and "Read-only" in probe.stderr


@pytest.mark.parametrize(
    "verb, place",
    [
        ("train", "under-a-file"),
        ("predict", "under-a-file"),
        ("predict-heatmaps", "under-a-file"),
        ("test", "under-a-file"),
        ("predict", "a-folder"),
        ("test", "a-folder"),
        ("predict-heatmaps", "a-file"),
        ("train", "a-file"),
    ],
)
def test_outputs_that_cannot_be_written_are_refused_before_any_work(
    verb, place, finished_run, tmp_path, capsys, no_data, monkeypatch
):
    import skipganomaly.deploy.predict

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(skipganomaly.deploy.predict.Predictor, "from_run", refuse)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    target = {"under-a-file": tmp_path / "a-file" / "sub" / "out.csv", "a-folder": tmp_path / "a-folder"}.get(
        place, tmp_path / "a-file"
    )
    folder = images(tmp_path / "images")
    args = {
        "train": [*TRAIN, "--epochs", "1", "--output", target],
        "predict": ["predict", "--run", finished_run, folder, "--output", target],
        "predict-heatmaps": [
            "predict",
            "--run",
            finished_run,
            folder,
            "--output",
            tmp_path / "p.csv",
            "--heatmaps",
            target,
        ],
        "test": ["test", "--run", finished_run, "--output", target],
    }[verb]
    with unchanged_outside(tmp_path):
        result = run(capsys, *args)
    assert_one_line_error(result, str(target) if place != "under-a-file" else str(tmp_path / "a-file"))


@pytest.mark.skipif(sys.platform != "linux", reason="read-only mounts in a user namespace: Linux")
def test_a_read_only_file_system_is_one_line_before_any_work(tmp_path):
    """A real read-only mount (a user namespace: no root needed; as root a chmod'ed folder is
    still writable, so only a mount shows the failure), in a subprocess. The other verbs run the
    same check (files.check_output_folder / check_output_file), tested above in this process."""
    if not _read_only_mount_available():
        pytest.skip("no user namespaces for a read-only mount here")
    mount = tmp_path / "readonly"
    mount.mkdir()
    args = [*TRAIN, "--epochs", "1", "--output", mount / "run"]
    command = " ".join(["exec", sys.executable, "-m", "skipganomaly", *map(str, args)])
    with unchanged_outside(tmp_path):
        process = subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {mount} && {command}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    result = Result(process.returncode, process.stdout, process.stderr)
    assert_one_line_error(result, str(mount), "not writable")
    assert "normal images" not in result.out  # refused before the data set was read


def test_a_full_disk_during_training_keeps_what_was_written_and_says_resume(
    finished_run, tmp_path, capsys, monkeypatch
):
    """The disk fills while last.pt is first written (after best.pt): torch's own "enforce fail"
    becomes one line; best.pt stays whole, no half file is left, and --resume continues from it."""
    run_dir = tmp_path / "run"
    size = (finished_run / "checkpoints" / "best.pt").stat().st_size
    disk = FullDisk(monkeypatch, run_dir, budget=int(1.5 * size), names=r"\.pt\.")  # room for best.pt only
    with unchanged_outside(tmp_path, run_dir):
        result = run(capsys, *TRAIN, "--epochs", "1", "--output", run_dir)
    assert_one_line_error(result, "last.pt: no space left on the device", f"--resume {run_dir}")
    assert disk.failures == 1
    from skipganomaly.formats.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / "best.pt").epoch == 1  # whole and loadable
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt"]  # no half file
    monkeypatch.undo()  # space freed
    resumed = run(capsys, "train", "--resume", run_dir)
    assert_success(resumed)
    assert "continuing from" in resumed.out and (run_dir / "metrics.json").is_file()


def test_a_bomb_image_is_a_bad_image_in_training(tmp_path, capsys):
    root = write_class_folders(tmp_path / "data", {"": {"a": 10, "b": 10}}, size=16, channels=1)
    write_png_header(root / "a" / "bomb.png", 14000, 14000)
    base = [
        "train",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--abnormal-class",
        "b",
        "--epochs",
        "1",
        *TINY_CLI,
    ]
    with unchanged_outside(tmp_path, tmp_path / "run", tmp_path / "cache"):
        refused = run(capsys, *base, "--cache-dir", tmp_path / "cache", "--output", tmp_path / "run")
    assert_one_line_error(refused, "bomb.png", "too large")
    with unchanged_outside(tmp_path, tmp_path / "run", tmp_path / "cache"):
        skipped = run(
            capsys,
            *base,
            "--cache-dir",
            tmp_path / "cache",
            "--output",
            tmp_path / "run",
            "--skip-bad-images",
        )
    assert_success(skipped)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["counts"]


@pytest.mark.parametrize("limit", ["pillow", "flag"])
def test_images_over_the_pixel_limit_are_bad_images_in_predict(limit, finished_run, tmp_path, capsys):
    folder = images(tmp_path / "images", n=3)
    extra = []
    if limit == "pillow":
        write_png_header(folder / "bomb.png", 14000, 14000)
        bad = ["bomb.png"]
    else:
        extra = ["--max-image-pixels", "100"]  # the 16 x 16 images have 256
        bad = ["img0.png"]
    output = tmp_path / "p.csv"
    with unchanged_outside(tmp_path, output):
        refused = run(capsys, "predict", "--run", finished_run, folder, "--output", output, *extra)
    assert_one_line_error(refused, bad[0], "too large")
    with unchanged_outside(tmp_path, output, tmp_path / "p.skipped.csv"):
        skipped = run(
            capsys, "predict", "--run", finished_run, folder, "--output", output, "--skip-bad-images", *extra
        )
    assert_success(skipped)
    listed = list(csv.DictReader((tmp_path / "p.skipped.csv").open()))
    assert bad[0] in listed[0]["path"] and "too large" in listed[0]["reason"]


@pytest.mark.parametrize("verb", ["predict", "train"])
def test_a_bad_image_read_by_a_worker_process_is_one_line(verb, finished_run, tmp_path, capsys):
    if verb == "predict":
        folder = images(tmp_path / "images", n=8)
        (folder / "img3.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        args = ["predict", "--run", finished_run, folder, "--output", tmp_path / "p.csv", "--batch-size", "2"]
    else:  # streamed from disk (max_memory_mb 0): decoded by the DataLoader's workers
        root = write_class_folders(tmp_path / "data", {"": {"a": 12, "b": 6}}, size=16, channels=1)
        (root / "a" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        args = [
            "train", "--dataset", "folder", "--data-root", root, "--abnormal-class", "b", "--epochs", "1",
            "--set", "data.max_memory_mb=0", "--set", "data.channels=1", "--batch-size", "4",
            "--output", tmp_path / "run", *TINY_CLI,
        ]  # fmt: skip
    with unchanged_outside(tmp_path, tmp_path / "run"):
        result = run(capsys, *args, "--workers", "2")
    assert_one_line_error(result, "cannot be read", "--skip-bad-images")
    assert "worker" not in result.err.lower()


# =========================================================================== unclear or wrong
def test_resume_after_a_kill_drops_the_cut_epochs_log_lines_and_temporary_files(killed_run, tmp_path, capsys):
    run_dir = copy_run(killed_run, tmp_path)
    orphans = [run_dir / "checkpoints" / ".last.pt.k3j4h5g6.tmp", run_dir / ".metrics.json.abcdefgh.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"cut by a kill")
    mine = run_dir / ".notes.tmp"  # not a temporary name this tool makes: kept
    mine.write_text("mine\n")
    with unchanged_outside(tmp_path, run_dir):
        result = run(capsys, "train", "--resume", run_dir)
    assert_success(result)
    records = log_records(run_dir)
    steps = [(r["epoch"], r["step"]) for r in records if r["event"] == "step"]
    assert len(steps) == len(set(steps)), "duplicate step lines of the epoch the kill cut off"
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]
    assert not any(o.exists() for o in orphans) and mine.read_text() == "mine\n"


def _only_best(run_dir: Path) -> None:
    (run_dir / "checkpoints" / "last.pt").unlink()  # as a kill during its first write leaves it


def _no_checkpoint(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "checkpoints")


@pytest.mark.parametrize(
    "damage, said",
    [(_only_best, "continuing from"), (_no_checkpoint, "starting it again")],
    ids=["only-best-pt", "no-checkpoint-yet"],
)
def test_resume_continues_from_what_is_there(damage, said, killed_run, tmp_path, capsys):
    run_dir = copy_run(killed_run, tmp_path)
    damage(run_dir)
    with unchanged_outside(tmp_path, run_dir):
        result = run(capsys, "train", "--resume", run_dir)
    assert_success(result)
    assert said in result.out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_without_a_run_says_what_to_do_with_train_flags(state, tmp_path, capsys):
    run_dir = tmp_path / "run"
    if state == "empty":
        run_dir.mkdir()
    with unchanged_outside(tmp_path):
        result = run(capsys, "train", "--resume", run_dir)
    assert_one_line_error(result, str(run_dir), "--output")
    assert "--run" not in result.err


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str]) -> Path:
    import stat
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)  # Python stores permissions only (no file type): regular files
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16  # as `zip --symlinks` stores a link
            zipped.writestr(info, target)
    return path


def _dataset_members(tmp_path: Path) -> dict[str, bytes]:
    root = write_class_folders(tmp_path / "src", {"": {"a": 4, "b": 4}}, size=16, channels=1)
    return {str(p.relative_to(root.parent)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize("case", ["gzip-bomb", "too-many-files", "too-many-bytes", "symlink", "zip-symlink"])
def test_archives_beyond_the_limits_or_with_links_are_refused(case, tmp_path, capsys):
    members = _dataset_members(tmp_path)
    settings, links, fragment = [], None, ""
    if case == "gzip-bomb":  # 30 MB of zeros in about 30 KB
        members["src/a/huge.png"] = bytes(30 * 2**20)
        fragment = "data.max_unpack_ratio"
    elif case == "too-many-files":
        settings, fragment = ["--set", "data.max_unpacked_files=5"], "more than 5 files"
    elif case == "too-many-bytes":
        settings, fragment = ["--set", "data.max_unpacked_bytes=1000"], "data.max_unpacked_bytes=1,000"
    else:
        links, fragment = {"src/a/link.png": "../../../etc/passwd"}, "'src/a/link.png'"
    if case == "zip-symlink":
        archive = _zip(tmp_path / "data.zip", members, {"src/a/link.png": "../../../etc/passwd"})
        fragment = "symbolic link 'src/a/link.png'"
    else:
        archive = _tar(tmp_path / "data.tar.gz", members, links)
    cache = tmp_path / "cache"
    with unchanged_outside(tmp_path):  # nothing unpacked into the cache, no run folder
        result = run(
            capsys, "train", "--dataset", "folder", "--data-root", archive, "--abnormal-class", "b", "--epochs", "1",
            "--cache-dir", cache, "--output", tmp_path / "run", *settings, *TINY_CLI,
        )  # fmt: skip
    assert_one_line_error(result, str(archive), fragment)


def test_no_normal_training_images_names_the_classes_found_and_the_folder(tmp_path, capsys):
    root = write_class_folders(
        tmp_path / "data", {"train": {"b": 4}, "test": {"a": 3, "b": 3}}, size=16, channels=1
    )
    with unchanged_outside(tmp_path, tmp_path / "cache"):
        result = run(
            capsys, "train", "--dataset", "folder", "--data-root", root, "--abnormal-class", "b", "--epochs", "1",
            "--cache-dir", tmp_path / "cache", "--output", tmp_path / "run", *TINY_CLI,
        )  # fmt: skip
    assert_one_line_error(result, str(root), "a 0, b 4")


def test_predict_names_the_unreadable_images_it_skipped(finished_run, tmp_path, capsys):
    folder = images(tmp_path / "images")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    output = tmp_path / "p.csv"
    with unchanged_outside(tmp_path, output, tmp_path / "p.skipped.csv"):
        result = run(
            capsys, "predict", "--run", finished_run, folder, "--output", output, "--skip-bad-images"
        )
    assert_success(result)
    assert (
        "1 unreadable skipped (" in result.out
        and "broken.png" in result.out
        and "p.skipped.csv" in result.out
    )
    listed = list(csv.DictReader((tmp_path / "p.skipped.csv").open()))
    assert [Path(r["path"]).name for r in listed] == ["broken.png"] and "cannot be read" in listed[0][
        "reason"
    ]
    assert len(list(csv.DictReader(output.open()))) == 6

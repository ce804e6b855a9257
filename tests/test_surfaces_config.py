"""Issue 22, configs: a config file is plain YAML data, refused in one line otherwise (binary,
aliases, duplicate keys, non-finite numbers, a folder)."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from conftest import run_cli

from skipganomaly.specs.bundled_configs import find_config
from skipganomaly.specs.config import build_config, dump_yaml, load_yaml, parse_override
from skipganomaly.specs.errors import UserError


def alias_bomb(levels: int) -> str:
    lines = ['a0: ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, levels + 1):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 9)}]")
    lines[0] = 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]'
    return "\n".join(lines) + "\n"


def test_a_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=r"model\.bin is not a text file"):
        load_yaml(path)
    result = run_cli("train", "--config", path, "--dataset", "digits", "--output", tmp_path / "r")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "not a text file" in result.stderr


@pytest.mark.parametrize("levels", [8, 9])
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    tracemalloc.start()
    started = time.process_time()
    with pytest.raises(UserError, match=r"bomb\.yaml: line 2: the alias \*a0 is not accepted"):
        load_yaml(path)
    used = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Refused while composing: nothing of the 9**levels expansion is built (the old loader
    # spent 18 s and 686 MB on 8 levels). Generous bounds, far below any expansion.
    assert peak < 5_000_000 and used < 5.0


def test_a_single_alias_is_refused_too(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("train: &t\n  epochs: 2\neval: *t\n")
    with pytest.raises(UserError, match="line 3: the alias"):
        load_yaml(path)
    with pytest.raises(UserError, match="alias"):
        parse_override("train.lr=*x")


def test_duplicate_sections_and_keys_are_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  nz: 8\ntrain:\n  lr: 0.001\n")
    with pytest.raises(
        UserError, match=r"twice\.yaml: line 5: the key 'train' appears twice \(also on line 1\)"
    ):
        load_yaml(path)
    path.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(UserError, match="'epochs' appears twice"):
        load_yaml(path)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_non_finite_numbers_are_refused(tmp_path, text):
    path = tmp_path / "nan.yaml"
    path.write_text(f"train:\n  lr: {text}\n")
    with pytest.raises(UserError, match=r"train\.lr: expected a finite number"):
        build_config(load_yaml(path))
    key, value = parse_override(f"eval.score_lambda={text}")
    with pytest.raises(UserError, match=r"eval\.score_lambda: expected a finite number"):
        build_config({key: value})


def test_a_folder_as_config_says_folder(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        find_config(tmp_path)
    with pytest.raises(UserError, match="is a folder"):
        load_yaml(tmp_path)
    result = run_cli("train", "--config", tmp_path, "--dataset", "digits", "--output", tmp_path / "r")
    assert result.returncode == 2 and "is a folder" in result.stderr and "does not exist" not in result.stderr


def test_a_written_config_reads_back_strictly(tmp_path):
    config = build_config({"train.epochs": 2})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    assert "*" not in path.read_text() and build_config(load_yaml(path)) == config


def test_plain_set_values_still_read_as_text():
    assert parse_override("data.root=/tmp/a: b: c") == ("data.root", "/tmp/a: b: c")
    assert parse_override("train.epochs=3") == ("train.epochs", 3)

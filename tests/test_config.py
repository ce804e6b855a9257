import dataclasses
import subprocess
import sys

import pytest
import yaml

from skipganomaly.specs.config import build_config, config_from_dict, dump_yaml, load_yaml, parse_override
from skipganomaly.specs.errors import UserError
from skipganomaly.specs.models import DEFAULT_PRESET, MODEL_SPECS, preset_names


def test_defaults_follow_the_default_preset():
    config = build_config()
    assert config.train.preset == DEFAULT_PRESET
    for key, value in MODEL_SPECS["skipganomaly"].presets[DEFAULT_PRESET].items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == value
    assert config.eval.score_lambda == 0.9
    assert (config.train.beta1, config.train.beta2) == (0.5, 0.999)


def test_presets_fill_values_and_explicit_values_win():
    paper = build_config({"train": {"preset": "paper"}})
    assert (paper.train.lr, paper.train.w_con) == (2e-3, 40.0)
    reference = build_config({"train.preset": "reference"})
    assert (reference.train.lr, reference.train.w_con) == (2e-4, 50.0)
    mixed = build_config({"train.preset": "paper", "train.lr": 1e-3})
    assert (mixed.train.lr, mixed.train.w_con) == (1e-3, 40.0)


def test_overrides_are_typed():
    assert parse_override("train.lr=0.001") == ("train.lr", 0.001)
    assert parse_override("data.abnormal_class=cat") == ("data.abnormal_class", "cat")
    config = build_config(
        dict(
            [
                parse_override("train.epochs=3"),
                parse_override("data.abnormal_class=7"),
                parse_override("train.channels_last=false"),
            ]
        )
    )
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.data.abnormal_class == "7"
    assert config.train.channels_last is False


def test_dump_and_reload_round_trip(tmp_path):
    config = build_config({"train.preset": "paper", "model.ngf": 32, "data.abnormal_class": "3"})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    assert config_from_dict(load_yaml(path)) == config
    # An explicit value stored in a file is not overwritten by the preset on reload.
    tree = yaml.safe_load(dump_yaml(config))
    tree["train"]["lr"] = 5e-4
    assert config_from_dict(tree).train.lr == 5e-4


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"train.lr": "fast"}, "train.lr"),
        ({"data.image_size": 48}, "power of two"),
        ({"train.epochs": 1.5}, "integer"),
        ({"model.width": 3}, "model.width"),
        ({"bogus.key": 1}, "section"),
        ({"train.preset": "magic"}, "preset"),
        ({"data.protocol": "cheat"}, "protocol"),
        ({"data.abnormal_class": "1", "data.normal_class": "2"}, "either"),
    ],
)
def test_bad_values_name_the_key(values, fragment):
    with pytest.raises(UserError, match=fragment):
        build_config(values)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(path)
    with pytest.raises(UserError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_specs_config_and_command_line_import_without_torch():
    """Model and protocol specs, the configuration, the bundled configs and the command line load
    in a fresh interpreter without PyTorch (the CLI imports torch only when a verb runs)."""
    code = (
        "import sys; import skipganomaly.specs.models, skipganomaly.specs.protocols, skipganomaly.specs.config, "
        "skipganomaly.specs.bundled_configs, skipganomaly.specs.score_terms, skipganomaly.config, skipganomaly.cli; "
        "print(sorted(m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_a_preset_sets_keys_of_any_section_and_the_user_still_wins(monkeypatch):
    improved = {
        "train.lr": 1e-3,
        "data.batch_size": 32,
        "model.ngf": 48,
        "eval.score_lambda": 0.8,
        "eval.threshold": "quantile",
    }
    skip = MODEL_SPECS["skipganomaly"]
    monkeypatch.setitem(
        MODEL_SPECS, "skipganomaly", dataclasses.replace(skip, presets={**skip.presets, "improved": improved})
    )
    assert "improved" in preset_names()  # train.preset's choices (and --preset's) come from the specs
    config = build_config({"train.preset": "improved"})
    assert (config.train.lr, config.data.batch_size, config.model.ngf) == (1e-3, 32, 48)
    assert (config.eval.score_lambda, config.eval.threshold) == (0.8, "quantile")
    assert config.train.w_con == 50.0  # what the preset leaves out keeps its default
    mine = build_config({"train.preset": "improved", "model.ngf": 16, "eval.threshold": "f1"})
    assert (mine.model.ngf, mine.eval.threshold, mine.train.lr) == (16, "f1", 1e-3)
    assert config_from_dict(config.to_dict()) == config  # a stored config reloads unchanged
    with pytest.raises(UserError, match="train.preset='improved' is not a preset of model ganomaly"):
        build_config({"train.preset": "improved", "model.name": "ganomaly"})
    typo = dataclasses.replace(skip, presets={**skip.presets, "improved": {"train.l_r": 1e-3}})
    monkeypatch.setitem(MODEL_SPECS, "skipganomaly", typo)
    with pytest.raises(UserError, match="config key 'train.l_r' is unknown"):
        build_config({"train.preset": "improved"})

import pytest
import yaml

from skipganomaly.config import (
    DEFAULT_PRESET,
    PRESETS,
    build_config,
    config_from_dict,
    dump_yaml,
    load_yaml,
    parse_override,
)
from skipganomaly.errors import UserError


def test_defaults_follow_the_default_preset():
    config = build_config()
    assert config.train.preset == DEFAULT_PRESET
    for key, value in PRESETS[DEFAULT_PRESET].items():
        assert getattr(config.train, key) == value
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

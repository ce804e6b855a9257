"""``skipganomaly.config``, kept for outside code: the configuration lives in
:mod:`skipganomaly.specs.config`."""

from .specs.config import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    build_config,
    config_from_dict,
    dump_yaml,
    load_yaml,
    parse_override,
)

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "build_config",
    "config_from_dict",
    "dump_yaml",
    "load_yaml",
    "parse_override",
]

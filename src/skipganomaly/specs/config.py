"""Typed run configuration: dataclasses, presets, YAML files and ``--set key=value`` overrides.

Resolution order (later wins): dataclass defaults, then the chosen training preset of the chosen
model (``MODEL_SPECS[model.name].presets[train.preset]``, dotted keys of any section), then the
YAML file, then ``--set`` overrides and dedicated CLI flags. The resolved configuration is written beside
every run (``config.yaml``) and stored inside every checkpoint, so a run can be rebuilt from either.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .corruptions import check_corruption_settings
from .errors import UserError
from .models import (
    DEFAULT_MODEL,
    DEFAULT_PRESET,
    LOSS_WEIGHTS,
    MODEL_SPECS,
    key_owners,
    model_spec,
    own_keys,
    preset_names,
)
from .protocols import PROTOCOLS
from .yaml_files import read_config_text, strict_load

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# The values every run starts from are the default preset of the default model (specs/models.py).
_DEFAULTS = MODEL_SPECS[DEFAULT_MODEL].presets[DEFAULT_PRESET]


@dataclass
class DataConfig:
    """Where images come from and how they are split into train / validation / test."""

    dataset: str = "digits"
    root: str | None = None
    abnormal_class: str | None = None
    normal_class: str | None = None
    protocol: str = "val-split"
    val_fraction: float = 0.5
    split_seed: int = 0
    image_size: int = 32
    channels: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    workers: int = 0
    cache_dir: str | None = None
    skip_bad_images: bool = False
    download: bool = True
    max_memory_mb: int = 4096
    # Limits on untrusted input (docs/failure-behaviour.md). An image with more pixels is a bad
    # image (refused, or skipped with skip_bad_images): Pillow's own default, which stops a
    # 23 KB PNG claiming 14000 x 14000 pixels (a "decompression bomb").
    max_image_pixels: int = 89_478_485
    # An archive (--data-root x.tar.gz) is refused once its unpacked files would exceed any of:
    # these bytes, this many files, or this many times the archive's own size (a gzip bomb).
    max_unpacked_bytes: int = 20 * 2**30
    max_unpacked_files: int = 1_000_000
    max_unpack_ratio: float = 100.0


@dataclass
class _SharedModelConfig:
    name: str = DEFAULT_MODEL
    ngf: int = 64
    ndf: int = 64
    nz: int = 100


# The shared keys above, then every model's own keys (ModelSpec.own_keys, e.g. AnoGAN's
# latent_search_steps and latent_search_lr), so a model's settings are declared with its spec.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [
        (key.name, key.type, field(default=key.default, metadata={"help": key.help}))
        for key in own_keys().values()
    ],
    bases=(_SharedModelConfig,),
)
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = (
    "Which model and its network widths; ``image_size`` and ``channels`` come from the data. Keys "
    "that belong to one model (``specs.models.ModelSpec.own_keys``) keep their default for the others."
)


@dataclass
class TrainConfig:
    """Optimisation. Loss weights and lr are filled from ``preset`` unless set explicitly."""

    preset: str = DEFAULT_PRESET
    epochs: int = 15
    lr: float = _DEFAULTS["train.lr"]
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay: str = "linear"
    lr_decay_start: float = 0.5
    w_adv: float = _DEFAULTS["train.w_adv"]
    w_con: float = _DEFAULTS["train.w_con"]
    w_lat: float = _DEFAULTS["train.w_lat"]
    w_rot: float = 0.0  # D's rotation task (model.rotation_head); not in the paper
    # An exponential moving average of the weights, updated after every step, is what validation
    # scores, selects and stores for scoring (0: off, the live weights, as the paper).
    ema_decay: float = 0.0
    augment_flip: bool = False  # mirror half of each training batch left-right (not in the paper)
    input_noise_std: float = 0.0
    # Synthetic anomalies (specs/corruptions.py): this share of each training batch is corrupted
    # with these families and G learns to restore the clean image, ||x - G(x~)||_1 (not in the
    # paper; "": off, as the paper).
    corruptions: str = ""
    corruption_fraction: float = 0.5
    # The size of the blob families' damage, in training and in the synthetic validation:
    # "pixels" (cells of 4 and 8 px: specks at 128 px), "image" (a share of the image at every
    # size) or "both" (half each); the same up to 32 px (data/corruptions.smooth_blobs,
    # docs/normal-only.md).
    blob_scale: str = "pixels"
    d_reinit_threshold: float = 1e-5
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True  # measured faster for scoring on CPUs (oneDNN) and usual on GPUs
    compile: str = "off"
    # 0: fixed from the machine (cores, cgroup quota, OMP_NUM_THREADS), recorded in the run and
    # kept on resume; N: N threads; "auto": follows the machine's load (faster when shared, not
    # reproducible). runtime/threads.py.
    threads: int | str = 0
    sync_batchnorm: bool = False
    log_every: int = 10


@dataclass
class EvalConfig:
    """Anomaly score (Eq. 5) and the decision threshold stored with the model."""

    score_lambda: float = 0.9
    selection_metric: str = "auto"
    threshold: str = "f1"
    threshold_quantile: float = 0.95
    # eval.threshold=fpr: the (1 - target_fpr) quantile of the normal validation scores, the
    # share of normal images a deployment expects to flag (independent of how many anomalies
    # validation holds).
    target_fpr: float = 0.05
    # The synthetic validation (normal-only, improved scores): these families, which training
    # never sees, each applied to its share of up to this many held-out normal validation images.
    synthetic_family: str = "stain,shuffle"
    synthetic_images: int = 512
    # Which local synthetic anomalies choose the map: "all", or "regions" (only the blobs drawn
    # at image scale, with train.blob_scale=both; docs/normal-only.md#both-scales-at-once).
    synthetic_map_blobs: str = "all"
    # Also choose which score terms count on the synthetic validation (the labelled validation
    # always chooses them). Off: every term counts, which measured better (docs/normal-only.md).
    synthetic_choose_terms: bool = False
    # Also score the paper protocol's evaluation after every epoch (the whole evaluation pool in
    # official order, train-mode BatchNorm), so one training yields the honest and the paper figure.
    paper_each_epoch: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in _SECTIONS}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise a UserError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if type(None) in typing.get_args(annotation) and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        ):
            return None
        for arg in args[:-1]:  # the first type the value converts to (int | str: 4, then "auto")
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        return _coerce(value, args[-1], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}: expected a number, got {value!r}") from None
        # NaN passes every comparison a check makes (lr <= 0 is False) and fails later in torch.
        if not math.isfinite(number):
            raise UserError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        return str(value)
    return value


def flatten_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_keys(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``section.key=value`` override; the value is read as YAML (numbers, booleans)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. train.lr=0.0002")
    key, raw = text.split("=", 1)
    key = key.strip()
    value = strict_load(raw, f"--set {key}", invalid_as_text=True) if raw.strip() else None
    return key, value


def load_yaml(path: str | os.PathLike | Traversable) -> dict[str, Any]:
    """A YAML config file's sections; ``path`` may also be a bundled config (a package resource)."""
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
    if isinstance(path, Path) and path.is_dir():
        raise UserError(f"config file {path} is a folder; pass a YAML file to --config")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
    where = f"config file {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{where} cannot be read ({exc.strerror or exc}); check its permissions") from None
    loaded = strict_load(read_config_text(data, where), where) or {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data, model, train, eval)")
    return loaded


def build_config(user: dict[str, Any] | None = None) -> Config:
    """Build a :class:`Config` from user values (nested dict or flat ``section.key`` mapping).

    The preset named by ``train.preset`` (or the default) of the model named by ``model.name``
    fills its dotted keys first (lr, loss weights, the score's lambda, or any other key); any
    value the user gave explicitly wins.
    """
    flat = flatten_keys(user or {})
    sections = _section_classes()
    spec = model_spec(str(flat.get("model.name", DEFAULT_MODEL)))
    preset = str(flat.get("train.preset", spec.default_preset))
    if preset not in preset_names():
        raise UserError(f"train.preset={preset!r} is unknown; choose one of {', '.join(preset_names())}")
    if preset not in spec.presets:
        raise UserError(
            f"train.preset={preset!r} is not a preset of model {spec.name}; choose one of {', '.join(spec.presets)}"
        )
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    values["train"]["preset"] = preset
    for dotted, value in [*spec.presets[preset].items(), *flat.items()]:
        if "." not in dotted:
            raise UserError(f"config key {dotted!r} needs a section: one of {', '.join(sections)}")
        section, key = dotted.split(".", 1)
        if section not in sections:
            raise UserError(f"config section {section!r} is unknown; use one of {', '.join(sections)}")
        types_ = _field_types(sections[section])
        if key not in types_:
            valid = ", ".join(sorted(types_))
            raise UserError(f"config key {dotted!r} is unknown; {section} has: {valid}")
        values[section][key] = _coerce(value, types_[key], dotted)
    config = Config(**{name: cls(**values[name]) for name, cls in sections.items()})
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject values that cannot work, with the key and the fix in one line."""
    d, m, t, e = config.data, config.model, config.train, config.eval
    size = d.image_size
    if size < 16 or size > 256 or size & (size - 1):
        raise UserError(f"data.image_size={size}: use a power of two from 16 to 256")
    if d.channels not in (None, 1, 3):
        raise UserError(f"data.channels={d.channels}: use 1 (grayscale) or 3 (RGB)")
    if d.protocol not in PROTOCOLS:
        raise UserError(f"data.protocol={d.protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    if not 0.0 < d.val_fraction < 1.0:
        raise UserError(f"data.val_fraction={d.val_fraction}: use a fraction between 0 and 1")
    if d.batch_size < 2 or d.eval_batch_size < 1:
        raise UserError("data.batch_size must be at least 2 (BatchNorm needs a batch)")
    if d.workers < 0:
        raise UserError(f"data.workers={d.workers}: use 0 or more")
    if d.max_memory_mb < 0:
        raise UserError(f"data.max_memory_mb={d.max_memory_mb}: use 0 (always stream) or more")
    for name in ("max_image_pixels", "max_unpacked_bytes", "max_unpacked_files", "max_unpack_ratio"):
        if getattr(d, name) <= 0:
            raise UserError(f"data.{name}={getattr(d, name)}: use a positive limit")
    if d.abnormal_class is not None and d.normal_class is not None:
        raise UserError(
            "give either --abnormal-class (leave one class out) or --normal-class (one class), not both"
        )
    for name in ("ngf", "ndf", "nz"):
        if getattr(m, name) < 1:
            raise UserError(f"model.{name}={getattr(m, name)}: use a positive integer")
    spec = model_spec(m.name)
    for key in own_keys().values():
        if key.name not in spec.own_key_names and getattr(m, key.name) != key.default:
            owners = ", ".join(key_owners(key.name))
            raise UserError(
                f"model.{key.name} applies to {owners} only, not to model {m.name}; leave it unset"
            )
    for key in LOSS_WEIGHTS:
        if key not in spec.loss_weights and getattr(t, key) != 0:
            raise UserError(
                f"train.{key}={getattr(t, key)}: model {m.name} has no such loss term; leave it unset (0)"
            )
    if spec.check is not None:
        spec.check(config)
    if t.epochs < 1:
        raise UserError(f"train.epochs={t.epochs}: train for at least one epoch")
    if t.lr <= 0:
        raise UserError(f"train.lr={t.lr}: use a positive learning rate")
    if t.lr_decay not in ("linear", "none"):
        raise UserError(f"train.lr_decay={t.lr_decay!r}: choose linear or none")
    if not 0.0 <= t.lr_decay_start <= 1.0:
        raise UserError(f"train.lr_decay_start={t.lr_decay_start}: a fraction of the epochs, 0 to 1")
    if t.precision not in ("fp32", "bf16", "auto"):
        raise UserError(f"train.precision={t.precision!r}: choose fp32, bf16 or auto")
    if t.compile not in ("off", "default", "reduce-overhead", "max-autotune"):
        raise UserError(f"train.compile={t.compile!r}: choose off, default, reduce-overhead or max-autotune")
    if isinstance(t.threads, str) and t.threads != "auto" or isinstance(t.threads, int) and t.threads < 0:
        raise UserError(
            f"train.threads={t.threads!r}: use 0 (fixed from the machine), a positive number, or auto "
            "(follows the load; not reproducible)"
        )
    if not 0.0 <= t.ema_decay < 1.0:
        raise UserError(f"train.ema_decay={t.ema_decay}: use 0 (off) or a decay in (0, 1), e.g. 0.999")
    if t.w_rot < 0:
        raise UserError(f"train.w_rot={t.w_rot}: use 0 or a positive weight")
    if t.input_noise_std < 0:
        raise UserError(f"train.input_noise_std={t.input_noise_std}: use 0 or a positive std")
    if not 0.0 <= e.score_lambda <= 1.0:
        raise UserError(f"eval.score_lambda={e.score_lambda}: lambda of Eq. 5 lies in [0, 1]")
    if e.selection_metric not in ("auto", "auroc", "synthetic", "loss", "last"):
        raise UserError(
            f"eval.selection_metric={e.selection_metric!r}: choose auto, auroc, synthetic, loss or last"
        )
    if e.threshold not in ("f1", "quantile", "fpr"):
        raise UserError(f"eval.threshold={e.threshold!r}: choose f1, quantile or fpr")
    if not 0.0 < e.target_fpr < 1.0:
        raise UserError(f"eval.target_fpr={e.target_fpr}: a false-positive rate between 0 and 1, e.g. 0.05")
    check_corruption_settings(config)
    if not 0.0 < e.threshold_quantile < 1.0:
        raise UserError(f"eval.threshold_quantile={e.threshold_quantile}: use a fraction between 0 and 1")


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a config stored in a checkpoint or ``config.yaml`` (all keys explicit)."""
    return build_config(tree)


class _PlainDumper(yaml.SafeDumper):
    # config.yaml is read back by the strict loader, which refuses aliases: never write one.
    def ignore_aliases(self, data):
        return True


def dump_yaml(config: Config) -> str:
    return yaml.dump(config.to_dict(), Dumper=_PlainDumper, sort_keys=False)

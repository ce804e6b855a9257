"""Every model's facts in one place: one :class:`ModelSpec` per model, and no torch import.

A spec says what the rest of the package needs to know about a model without building it:

* ``presets``: the values ``train.preset`` fills in, as dotted config keys of any section
  (``train.lr``, ``eval.score_lambda``, ...); the user's own values always win;
* ``loss_weights``: which of ``train.w_adv``, ``train.w_con``, ``train.w_lat`` its generator
  loss uses (the others must stay 0);
* ``own_keys``: ``model.*`` settings that belong to this model alone (they become fields of
  :class:`~skipganomaly.specs.config.ModelConfig`, are passed to its constructor and stored in
  checkpoints), and ``check``, the rules that tie its settings together;
* ``display_name``, ``feature_name`` and ``feature_title``: how reports name it and what the
  features its ``score(details=True)`` returns are (Fig. 6);
* ``table_i``: its row of the paper's Table I, when the paper reports it;
* ``builder``: where its ``nn.Module`` class lives, ``"module:Class"`` under
  ``skipganomaly.models`` (the registry, :mod:`skipganomaly.models`, imports it from there).

:mod:`skipganomaly.specs.config`, the model registry and the report read these specs; adding a model
is its module under ``models/`` and its spec here (docs/architecture.md shows an example).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .score_terms import SCORE_TERMS, missing_switches, parse_score_terms

# train.* keys: w_adv, w_con, w_lat of Eq. 4, and w_rot, the discriminator's rotation task of the
# improved Skip-GANomaly recipe (not in the paper).
LOSS_WEIGHTS = ("w_adv", "w_con", "w_lat", "w_rot")
# The preset a configuration of Skip-GANomaly gets unless it names one: the improved recipe, which
# won the validation ablation (docs/accuracy.md). The baselines default to ``reference`` (their
# official code's defaults); ``ModelSpec.default_preset`` says which per model.
DEFAULT_PRESET = "improved"
DEFAULT_MODEL = "skipganomaly"
# Table I of the paper (AUROC on CIFAR-10, leave one class out): its columns, in its order and
# spelling (CIFAR-10's airplane and automobile are "plane" and "car"). Source and notes:
# skipganomaly.report.published.
TABLE_I_CLASSES: tuple[str, ...] = (
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "plane",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class ModelKey:
    """A ``model.*`` setting that belongs to one model: name, type, default and what it does."""

    name: str
    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class TableIRow:
    """A model's row of Table I as published: its label there, its position among the rows and
    the AUROC per column of :data:`TABLE_I_CLASSES`."""

    label: str
    position: int
    auroc: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.auroc) != len(TABLE_I_CLASSES):
            raise ValueError(f"Table I row {self.label!r} needs {len(TABLE_I_CLASSES)} values")


@dataclass(frozen=True)
class ModelSpec:
    """What the configuration, the registry and the report know about one model."""

    name: str
    display_name: str
    builder: str
    presets: dict[str, dict[str, Any]]
    loss_weights: tuple[str, ...]
    feature_name: str
    feature_title: str = "the scoring features"
    own_keys: tuple[ModelKey, ...] = ()
    # Rules that tie this model's settings together, given the resolved config; raises UserError.
    check: Callable[[Any], None] | None = None
    table_i: TableIRow | None = None
    # The preset a configuration of this model gets unless it names one.
    default_preset: str = "reference"

    def __post_init__(self) -> None:
        unknown = [w for w in self.loss_weights if w not in LOSS_WEIGHTS]
        if unknown:
            raise ValueError(f"model {self.name}: loss weight {unknown[0]!r} is not one of {LOSS_WEIGHTS}")
        if self.default_preset not in self.presets:
            raise ValueError(f"model {self.name} needs its default preset {self.default_preset!r}")

    @property
    def own_key_names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.own_keys)

    def own_default(self, name: str) -> Any:
        """The default of one of this model's own ``model.*`` keys."""
        return next(key.default for key in self.own_keys if key.name == name)


# --------------------------------------------------------------------------- the models
def _dotted(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for key, value in values.items()}


def _check_anogan(config: Any) -> None:
    model, train = config.model, config.train
    if model.latent_search_steps < 0 or model.latent_search_lr <= 0:
        raise UserError("model.latent_search_steps must be 0 or more and model.latent_search_lr positive")
    if train.input_noise_std > 0:
        raise UserError(
            "train.input_noise_std: AnoGAN's generator reads no image to add noise to; leave it 0"
        )


def _check_skipganomaly(config: Any) -> None:
    model, train = config.model, config.train
    for term, switch in missing_switches(parse_score_terms(model.score_terms), model):
        raise UserError(f"model.score_terms: the {term} term needs model.{switch}=true")
    if train.w_rot > 0 and not model.rotation_head:
        raise UserError(f"train.w_rot={train.w_rot}: the rotation task needs model.rotation_head=true")
    if model.rotation_head and config.data.image_size and train.w_rot <= 0:
        raise UserError("model.rotation_head=true needs a positive train.w_rot to train the head")
    parse_map_pooling(model.map_pooling)
    if model.knn_bank < 1 or model.knn_k < 1 or model.patch_bank < 1:
        raise UserError("model.knn_bank, model.knn_k and model.patch_bank must be positive")
    parse_map_smoothing(model.map_smoothing)
    parse_map_baseline(model.map_baseline)


# The widest smoothing: a standard deviation of a quarter of the image blurs any map to its mean.
MAX_MAP_SMOOTHING = 0.25


def _candidates(key: str, text: Any, convert, allowed, what: str, example: str) -> tuple:
    """Comma-separated candidates of ``model.<key>``, each converted and checked (``allowed``);
    raises a one-line UserError naming the key, what a value must be and an example."""
    values = []
    for part in str(text).split(","):
        try:
            value = convert(part.strip())
        except ValueError:
            value = None
        if value is None or not allowed(value):  # a comparison also refuses nan
            raise UserError(f"model.{key}={text!r}: {part.strip()!r} is not {what}; e.g. {example}")
        if value in values:
            raise UserError(f"model.{key}={text!r} names {part.strip()} twice")
        values.append(value)
    return tuple(values)


def parse_map_smoothing(text: str) -> tuple[float, ...]:
    """``model.map_smoothing``: "0" (no smoothing) or comma-separated candidates, each the
    standard deviation of a Gaussian as a fraction of the image's side, e.g. "0,0.02,0.06"
    (validation chooses among them); raises a one-line UserError."""
    what = f"a fraction of the image side in [0, {MAX_MAP_SMOOTHING}]"
    return _candidates(
        "map_smoothing", text, float, lambda v: 0.0 <= v <= MAX_MAP_SMOOTHING, what, "0,0.02,0.06"
    )


# What the anomaly map can be measured against: nothing, or the validation normals' mean map.
MAP_BASELINES = ("none", "mean")


def parse_map_baseline(text: str) -> tuple[str, ...]:
    """``model.map_baseline``: "none", "mean" (the map less the normal validation images' mean
    map) or both, comma-separated, as candidates validation chooses between; raises a UserError."""
    return _candidates("map_baseline", text, str, lambda v: v in MAP_BASELINES, "none or mean", "none,mean")


def parse_map_pooling(text: str | float) -> tuple[float, ...]:
    """``model.map_pooling``: the fraction of the highest anomaly-map pixels R averages, "1" (the
    whole image, Eq. 2), or comma-separated candidates, e.g. "1,0.01" (validation chooses among
    them on the figure it selects epochs by); raises a one-line UserError."""
    return _candidates(
        "map_pooling", text, float, lambda v: 0.0 < v <= 1.0, "a fraction of the pixels in (0, 1]", "1,0.01"
    )


# EGBAD and AnoGAN train on the adversarial loss alone, with DCGAN's settings under both names.
_DCGAN = _dotted("train", {"lr": 2e-4, "w_adv": 1.0, "w_con": 0.0, "w_lat": 0.0})

# Skip-GANomaly's presets, each built on the one before. ``reference``: the official code's default.
_REFERENCE = _dotted("train", {"lr": 2e-4, "w_adv": 1.0, "w_con": 50.0, "w_lat": 1.0})
# The improved recipe (docs/accuracy.md): the faithful networks and losses, plus what the diagnosis
# and the validation ablation supported.
_IMPROVED = {
    **_REFERENCE,
    **_dotted("train", {"ema_decay": 0.999, "w_rot": 1.0}),
    **_dotted("model", {"rotation_head": True, "score_terms": "reconstruction,latent,knn,rotation"}),
}
# The improved recipe taught to restore (docs/normal-only.md): G reads images with synthetic
# anomalies and outputs the clean ones, a segmentation head on (x, G(x)) finds them, and the
# threshold is set for a false-positive rate.
_RESTORING = {
    **_IMPROVED,
    "train.corruptions": "blend,cutpaste,intensity",
    "model.segmentation_head": True,
    # patch: D's region features against normal regions (docs/normal-only.md#the-patch-term),
    # kept because the synthetic validation scores the sum higher with it.
    "model.score_terms": "reconstruction,latent,knn,rotation,segmentation,patch",
    # Chosen on labelled validation masks of real cracks (KolektorSDD, two seeds;
    # docs/normal-only.md); the synthetic validation cannot choose it (its stains favour none).
    "model.map_smoothing": "0.01",
    # Candidates the run's own validation chooses between, every epoch (docs/normal-only.md): R as
    # the mean of the map or of its highest 1%, and the map as it is or less the normal mean map.
    "model.map_pooling": "1,0.01",
    "model.map_baseline": "none,mean",
    "eval.threshold": "fpr",
}

SKIPGANOMALY = ModelSpec(
    name="skipganomaly",
    display_name="Skip-GANomaly",
    builder="skip_ganomaly:SkipGANomaly",
    # ``paper`` is what Sec. IV-B of the paper states (Adam lr 2e-3, w_con 40); ``reference`` is
    # the official code's default (lr 2e-4, w_con 50).
    presets={
        "paper": _dotted("train", {"lr": 2e-3, "w_adv": 1.0, "w_con": 40.0, "w_lat": 1.0}),
        "reference": _REFERENCE,
        "improved": _IMPROVED,
        "restoring": _RESTORING,
    },
    loss_weights=("w_adv", "w_con", "w_lat", "w_rot"),
    feature_name="f(x), the last convolutional features of the discriminator (Eq. 3),",
    own_keys=(
        ModelKey("rotation_head", bool, False, "D also predicts the rotation of real images (SS-GAN)"),
        ModelKey(
            "score_terms",
            str,
            "",
            f"comma-separated standardised score terms ({', '.join(SCORE_TERMS)}); "
            "empty: the paper's score of Eq. 5",
        ),
        ModelKey(
            "map_baseline",
            str,
            "none",
            "what the anomaly map is less: none, or mean (the normal validation images' mean map, "
            "so that where every image's map is high counts for nothing); none,mean: validation "
            "chooses on the pixel AUROC of its masks",
        ),
        ModelKey(
            "map_pooling",
            str,
            "1",
            "R is the mean of this fraction of the highest anomaly-map pixels (1: Eq. 2); several, "
            "comma-separated, are candidates that validation chooses among on the figure it selects "
            "epochs by (labelled AUROC, or the synthetic validation's)",
        ),
        ModelKey("knn_bank", int, 4096, "normal training images whose features the knn term compares with"),
        ModelKey("knn_k", int, 5, "neighbours averaged by the knn term"),
        ModelKey(
            "patch_bank",
            int,
            16384,
            "region features of normal training images (drawn from knn_bank images) that the patch "
            "term and map compare each region of an image with",
        ),
        ModelKey(
            "segmentation_head",
            bool,
            False,
            "a light network on (x, G(x)) predicts the synthetic anomalies' masks (DRAEM's "
            "discriminative half); its map is the segmentation score term and map",
        ),
        ModelKey(
            "map_smoothing",
            str,
            "0",
            "Gaussian smoothing of the anomaly map, its standard deviation as a fraction of the "
            "image side; several, comma-separated, are candidates that validation chooses among "
            "on the pixel AUROC of its masks (labelled, or the synthetic anomalies')",
        ),
        ModelKey(
            "select_terms",
            bool,
            True,
            "keep the subset of score_terms with the best validation AUROC (needs labelled anomalies)",
        ),
    ),
    check=_check_skipganomaly,
    default_preset=DEFAULT_PRESET,
    feature_title="discriminator features f(x)",
    table_i=TableIRow(
        "Skip-GANomaly (Proposed)", 3, (0.448, 0.953, 0.607, 0.602, 0.615, 0.931, 0.788, 0.797, 0.659, 0.907)
    ),
)
# GANomaly: w_adv 1, w_con 50, w_enc 1 (train.w_lat) in both its paper and its official code; lr
# 2e-3 as the papers state, 2e-4 in the official code. It scores with the latent distance alone.
GANOMALY = ModelSpec(
    name="ganomaly",
    display_name="GANomaly",
    builder="ganomaly:GANomaly",
    presets={
        preset: {
            **_dotted("train", {"lr": lr, "w_adv": 1.0, "w_con": 50.0, "w_lat": 1.0}),
            "eval.score_lambda": 0.0,
        }
        for preset, lr in (("paper", 2e-3), ("reference", 2e-4))
    },
    loss_weights=("w_adv", "w_con", "w_lat"),
    feature_name="the latent code z = G_E(x),",
    table_i=TableIRow(
        "GANomaly [13]", 2, (0.510, 0.631, 0.587, 0.593, 0.628, 0.683, 0.605, 0.633, 0.616, 0.617)
    ),
)
# eval.score_lambda weights the image-space term R of Eq. 5: EGBAD's alpha = 0.9 and AnoGAN's
# 1 - lambda = 1 - 0.1 are the configuration's default 0.9.
EGBAD = ModelSpec(
    name="egbad",
    display_name="EGBAD",
    builder="egbad:EGBAD",
    presets={"paper": dict(_DCGAN), "reference": dict(_DCGAN)},
    loss_weights=("w_adv",),
    feature_name="the latent code z = E(x),",
    table_i=TableIRow(
        "EGBAD [12]", 1, (0.383, 0.514, 0.448, 0.374, 0.481, 0.353, 0.526, 0.577, 0.413, 0.555)
    ),
)
ANOGAN = ModelSpec(
    name="anogan",
    display_name="AnoGAN",
    builder="anogan:AnoGAN",
    presets={"paper": dict(_DCGAN), "reference": dict(_DCGAN)},
    loss_weights=("w_adv",),
    feature_name="the latent code z found by the test-time search,",
    # Schlegl et al. search 500 steps; 100 keeps scoring affordable (docs: the cost).
    own_keys=(
        ModelKey("latent_search_steps", int, 100, "Adam steps of the per-image latent search at test time"),
        ModelKey("latent_search_lr", float, 0.2, "learning rate of the latent search"),
    ),
    check=_check_anogan,
    table_i=TableIRow(
        "AnoGAN [9]", 0, (0.411, 0.492, 0.399, 0.335, 0.393, 0.321, 0.399, 0.516, 0.567, 0.511)
    ),
)

# The registry of specs, in the order the command line lists the models.
MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (SKIPGANOMALY, GANOMALY, EGBAD, ANOGAN)}
MODEL_NAMES = tuple(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``, or a UserError listing the models."""
    if name not in MODEL_SPECS:
        raise UserError(f"model.name={name!r} is unknown; choose one of {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def preset_names() -> list[str]:
    """Every preset any model defines (``train.preset``'s choices), sorted."""
    return sorted({preset for spec in MODEL_SPECS.values() for preset in spec.presets})


def own_keys() -> dict[str, ModelKey]:
    """Every model's own ``model.*`` keys, by name (two models may not define the same one)."""
    keys: dict[str, ModelKey] = {}
    for spec in MODEL_SPECS.values():
        for key in spec.own_keys:
            if key.name in keys:
                raise ValueError(f"model.{key.name} is defined by two models")
            keys[key.name] = key
    return keys


def key_owners(key: str) -> list[str]:
    """The models that own ``model.<key>``."""
    return [spec.name for spec in MODEL_SPECS.values() if key in spec.own_key_names]


def display_name(model: str) -> str:
    """How reports name ``model`` (its own name for a model without a spec)."""
    spec = MODEL_SPECS.get(model)
    return spec.display_name if spec else model

"""Model registry: every anomaly model the trainer, scorer and CLI can build by name.

The registry is built from the specs (:mod:`skipganomaly.specs.models`): each spec names the
module and class of its model (``builder``), so adding a model adds no line here.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..specs.errors import UserError
from ..specs.models import MODEL_SPECS, ModelSpec
from .anogan import AnoGAN
from .egbad import EGBAD
from .ganomaly import GANomaly
from .skip_ganomaly import Discriminator, SkipGANomaly, UNetGenerator


def _model_class(spec: ModelSpec) -> type[nn.Module]:
    module, _, name = spec.builder.partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)


MODELS: dict[str, type[nn.Module]] = {name: _model_class(spec) for name, spec in MODEL_SPECS.items()}


def build_model(name: str, **args) -> nn.Module:
    """Build a registered model from its name and constructor arguments."""
    if name not in MODELS:
        raise UserError(f"model {name!r} is unknown; choose one of {', '.join(MODELS)}")
    return MODELS[name](**args)


def model_args(model, image_size: int, channels: int) -> dict:
    """Constructor arguments of ``model.name`` from the configuration's ``model`` section: the
    shared ones and the model's own keys (``ModelSpec.own_keys``, e.g. AnoGAN's latent search)."""
    args = {
        "image_size": image_size,
        "channels": channels,
        "ngf": model.ngf,
        "ndf": model.ndf,
        "nz": model.nz,
    }
    spec = MODEL_SPECS.get(model.name)
    args.update({key: getattr(model, key) for key in (spec.own_key_names if spec else ())})
    return args


__all__ = [
    "MODELS",
    "build_model",
    "model_args",
    "SkipGANomaly",
    "UNetGenerator",
    "Discriminator",
    "GANomaly",
    "EGBAD",
    "AnoGAN",
]

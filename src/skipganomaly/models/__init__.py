"""Model registry: every anomaly model the trainer, scorer and CLI can build by name."""

from __future__ import annotations

from torch import nn

from ..config import MODEL_KEYS, ModelConfig
from ..errors import UserError
from .anogan import AnoGAN
from .egbad import EGBAD
from .ganomaly import GANomaly
from .skip_ganomaly import Discriminator, SkipGANomaly, UNetGenerator

MODELS: dict[str, type[nn.Module]] = {
    "skipganomaly": SkipGANomaly,
    "ganomaly": GANomaly,
    "egbad": EGBAD,
    "anogan": AnoGAN,
}


def build_model(name: str, **args) -> nn.Module:
    """Build a registered model from its name and constructor arguments."""
    if name not in MODELS:
        raise UserError(f"model {name!r} is unknown; choose one of {', '.join(MODELS)}")
    return MODELS[name](**args)


def model_args(model: ModelConfig, image_size: int, channels: int) -> dict:
    """Constructor arguments of ``model.name`` from the configuration: the shared ones and the
    model's own keys (``config.MODEL_KEYS``, e.g. AnoGAN's latent search)."""
    args = {
        "image_size": image_size,
        "channels": channels,
        "ngf": model.ngf,
        "ndf": model.ndf,
        "nz": model.nz,
    }
    args.update({key: getattr(model, key) for key in MODEL_KEYS.get(model.name, ())})
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

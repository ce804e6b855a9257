"""Model registry: every anomaly model the trainer, scorer and CLI can build by name."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from .skip_ganomaly import Discriminator, SkipGANomaly, UNetGenerator

MODELS: dict[str, type[nn.Module]] = {
    "skipganomaly": SkipGANomaly,
}


def build_model(name: str, **args) -> nn.Module:
    """Build a registered model from its name and constructor arguments."""
    if name not in MODELS:
        raise UserError(f"model {name!r} is unknown; choose one of {', '.join(MODELS)}")
    return MODELS[name](**args)


__all__ = ["MODELS", "build_model", "SkipGANomaly", "UNetGenerator", "Discriminator"]

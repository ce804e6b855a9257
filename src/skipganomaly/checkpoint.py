"""Self-describing checkpoints that load with ``torch.load(..., weights_only=True)``.

One file holds everything needed to rebuild and continue a run: the model's name and arguments,
the resolved configuration, the package version, weights, optimiser states, the epoch, RNG states,
the score normalisation and threshold, and the training history. Only tensors, numbers, strings,
lists and dicts are stored, so opening a checkpoint cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import Config, config_from_dict
from .errors import UserError
from .files import save_torch
from .models import build_model
from .objective import ScoreNormalization

FORMAT = "skipganomaly.checkpoint"
FORMAT_VERSION = 1


def plain(value: Any) -> Any:
    """Reduce a value to what ``weights_only`` loading accepts: numpy scalars and str subclasses
    (like ``torch.__version__``) become plain Python values; containers are walked."""
    if isinstance(value, torch.Tensor) or value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    for kind in (bool, int, float, str):  # subclasses, e.g. torch.__version__ (a str)
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    payload = dict(payload, format=FORMAT, format_version=FORMAT_VERSION, package_version=__version__)
    save_torch(path, plain(payload))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (no code runs), or raise a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train a run first or check --run")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(
            f"checkpoint {path} cannot be read ({reason}); it may be truncated or corrupt"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a skipganomaly checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} is from a newer skipganomaly ({payload.get('package_version')}); upgrade"
        )
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    model = build_model(payload["model"]["name"], **payload["model"]["args"])
    model.load_state_dict(payload["state_dict"])
    return model


def config_from_checkpoint(payload: dict[str, Any]) -> Config:
    return config_from_dict(payload["config"])


def normalization_from_checkpoint(payload: dict[str, Any]) -> ScoreNormalization:
    return ScoreNormalization.from_dict(payload["normalization"])


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    return Path(run_dir) / "checkpoints" / f"{which}.pt"

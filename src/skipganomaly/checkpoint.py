"""Self-describing checkpoints that load with ``torch.load(..., weights_only=True)``.

One file holds everything needed to rebuild and continue a run: the model's name and arguments,
the resolved configuration, the package version, weights, optimiser states, the epoch, RNG states,
the score normalisation and threshold, the data description and the training history. Only
tensors, numbers, strings, lists and dicts are stored, so opening a checkpoint cannot run code.

:class:`Checkpoint` is the typed view every other module uses; this module alone knows the file's
layout (:meth:`Checkpoint.to_payload`, :meth:`Checkpoint.from_payload`, format version 1, unchanged
since the first release). A file is written by :func:`save_checkpoint` and read by
:func:`load_checkpoint` only: checks of what is read (format, version; a content hash of the
tensors would be computed in :func:`save_checkpoint` and verified in :func:`_check_payload`) have
that one place.

What deployment needs (ONNX export, a detector object, a service) is on :class:`Checkpoint`:
:meth:`~Checkpoint.build_model`, :attr:`~Checkpoint.image_size`, :attr:`~Checkpoint.channels`,
:attr:`~Checkpoint.preprocessing`, :attr:`~Checkpoint.normalization` (``low``, ``high``,
``threshold``), :attr:`~Checkpoint.protocol` and :attr:`~Checkpoint.model_name`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import Config, config_from_dict
from .data.base import SplitInfo
from .data.images import Preprocessing
from .errors import UserError
from .files import save_torch
from .models import build_model
from .objective import ScoreNormalization

FORMAT = "skipganomaly.checkpoint"
FORMAT_VERSION = 1


@dataclass
class Selection:
    """The epoch a run keeps as ``best``: its number (1-based), the metric that chose it
    (``val.auroc`` or ``val.mean_normal_score``) and that metric's value (higher is better)."""

    epoch: int
    metric: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "metric": self.metric, "value": self.value}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Selection:
        return cls(epoch=int(values["epoch"]), metric=str(values["metric"]), value=float(values["value"]))


@dataclass
class Checkpoint:
    """One checkpoint (``best`` or ``last``) of a run, typed."""

    model_name: str
    model_args: dict[str, Any]  # the model's constructor arguments (image_size, channels, widths...)
    config: Config  # the resolved configuration of the run
    state_dict: dict[str, torch.Tensor]
    normalization: ScoreNormalization  # deployment scaling and threshold, fixed on validation
    epoch: int  # epochs trained when it was written
    best: Selection | None = None  # the best epoch so far
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.json's per-epoch records
    data: SplitInfo = field(default_factory=SplitInfo)
    optimizers: dict[str, Any] = field(default_factory=dict)  # optimiser state dicts by group
    rng: dict[str, Any] = field(default_factory=dict)  # RNG states (per rank under torchrun)
    elapsed_s: float = 0.0  # training and per-epoch scoring time so far
    # The averaged weights (train.ema_decay > 0): what the run validated and what scores; the live
    # weights in ``state_dict`` are what training continues from.
    ema_state_dict: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    torch_version: str = field(default_factory=lambda: str(torch.__version__))
    package_version: str = __version__  # the skipganomaly that wrote it

    # ------------------------------------------------------------------ what deployment needs
    @property
    def image_size(self) -> int:
        return int(self.model_args["image_size"])

    @property
    def channels(self) -> int:
        return int(self.model_args["channels"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size, self.channels)

    @property
    def protocol(self) -> str:
        return self.config.data.protocol

    @property
    def scoring_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that score: the averaged ones when the run kept an average, else the live."""
        return self.ema_state_dict if self.ema_state_dict is not None else self.state_dict

    def build_model(self) -> nn.Module:
        """The model rebuilt from its name and arguments, with the weights that score
        (:attr:`scoring_state_dict`), on the CPU."""
        model = build_model(self.model_name, **self.model_args)
        model.load_state_dict(self.scoring_state_dict)
        return model

    # ------------------------------------------------------------------ the file's layout
    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk: plain values only (``weights_only`` loading)."""
        return plain(
            {
                "model": {"name": self.model_name, "args": dict(self.model_args)},
                "config": self.config.to_dict(),
                "data": self.data.to_dict(),
                "state_dict": self.state_dict,
                "optimizers": self.optimizers,
                "epoch": self.epoch,
                "rng": self.rng,
                "normalization": self.normalization.to_dict(),
                "history": self.history,
                "best": None if self.best is None else self.best.to_dict(),
                "elapsed_s": self.elapsed_s,
                **(
                    {"ema_state_dict": self.ema_state_dict, "ema_updates": self.ema_updates}
                    if self.ema_state_dict is not None
                    else {}
                ),
                "torch_version": self.torch_version,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "package_version": self.package_version,
            }
        )

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Checkpoint:
        """Read the dict a file holds (format version 1)."""
        return cls(
            model_name=str(payload["model"]["name"]),
            model_args=dict(payload["model"]["args"]),
            config=config_from_dict(payload["config"]),
            state_dict=payload["state_dict"],
            normalization=ScoreNormalization.from_dict(payload["normalization"]),
            epoch=int(payload["epoch"]),
            best=None if payload.get("best") is None else Selection.from_dict(payload["best"]),
            history=list(payload.get("history", [])),
            data=SplitInfo.from_dict(payload.get("data", {})),
            optimizers=payload.get("optimizers", {}),
            rng=payload.get("rng", {}),
            elapsed_s=float(payload.get("elapsed_s", 0.0)),
            ema_state_dict=payload.get("ema_state_dict"),
            ema_updates=int(payload.get("ema_updates", 0)),
            torch_version=str(payload.get("torch_version", "")),
            package_version=str(payload.get("package_version", "")),
        )


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


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically (the file is complete or absent)."""
    save_torch(path, checkpoint.to_payload())


def _check_payload(payload: Any, path: Path) -> dict[str, Any]:
    """What every file read must pass before its values are used."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a skipganomaly checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} is from a newer skipganomaly ({payload.get('package_version')}); upgrade"
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
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
    payload = _check_payload(payload, path)
    try:
        return Checkpoint.from_payload(payload)
    except UserError as exc:  # e.g. a stored setting this version does not accept
        raise UserError(f"checkpoint {path}: {exc}") from None


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def load_run_checkpoint(run_dir: str | os.PathLike, which: str = "best") -> Checkpoint:
    """The ``best`` or ``last`` checkpoint of a run folder, or a UserError naming the folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the --output folder of a training run")
    return load_checkpoint(checkpoint_path(run_dir, which))

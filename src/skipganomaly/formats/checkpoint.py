"""Self-describing checkpoints that load with ``torch.load(..., weights_only=True)``.

One file holds everything needed to rebuild and continue a run: the model's name and arguments,
the resolved configuration, the package version, weights, optimiser states, the epoch, RNG states,
the score normalisation and threshold, the data description and the training history. Only
tensors, numbers, strings, lists and dicts are stored, so opening a checkpoint cannot run code.

:class:`Checkpoint` is the typed view every other module uses; this module alone knows the file's
layout (:meth:`Checkpoint.to_payload`, :meth:`Checkpoint.from_payload`, format version 1, unchanged
since the first release). A file is written by :func:`save_checkpoint` and read by
:func:`load_checkpoint` only: checks of what is read (format, version, content hashes, weights
that fit the model) have that one place.

Content hashes: :func:`save_checkpoint` stores two SHA-256 hashes. ``content_hash``
(:func:`content_hash`) covers what a score depends on: the model's name and arguments, the
configuration, the normalisation and threshold, and every tensor of the weights (name, dtype,
shape and bytes); an export of the model carries the same value, so the two can be matched.
``state_hash`` covers the rest of the file (optimiser states, RNG, history, ...) and
``content_hash``. :func:`load_checkpoint` recomputes both: a file whose hash does not match is
refused; a file without hashes (written before they were added, e.g. by 0.1.0) is accepted as it
is. The hashes detect a damaged file (flipped bits, a bad copy), not a deliberate forgery: whoever
can rewrite the file can rewrite its hash.

What deployment needs (ONNX export, a detector object, a service) is on :class:`Checkpoint`:
:meth:`~Checkpoint.build_model`, :attr:`~Checkpoint.image_size`, :attr:`~Checkpoint.channels`,
:attr:`~Checkpoint.preprocessing`, :attr:`~Checkpoint.normalization` (``low``, ``high``,
``threshold``), :attr:`~Checkpoint.protocol` and :attr:`~Checkpoint.model_name`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.base import SplitInfo
from ..data.images import Preprocessing
from ..models import build_model
from ..runtime.files import save_torch
from ..scoring.normalization import ScoreNormalization
from ..specs.config import Config, config_from_dict
from ..specs.errors import UserError

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
    # The file's verified content hash ("sha256:..."), or the one of a file without any (computed
    # when it was read); empty for a checkpoint not read from a file (see :attr:`content_hash`).
    stored_content_hash: str = field(default="", compare=False)
    source: str = field(default="", compare=False)  # the file it was read from, for messages

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

    @property
    def content_hash(self) -> str:
        """``sha256:<hex>`` of what a score depends on (see :func:`content_hash`): the value stored
        in (and verified against) the file it was read from, else computed."""
        return self.stored_content_hash or content_hash(self.to_payload())

    def build_model(self) -> nn.Module:
        """The model rebuilt from its name and arguments, with the weights that score
        (:attr:`scoring_state_dict`), on the CPU."""
        where = self.source or f"of model {self.model_name}"
        try:
            model = build_model(self.model_name, **self.model_args)
        except UserError:
            raise
        except Exception as exc:  # arguments this model does not take, or bad values
            raise UserError(f"checkpoint {where}: its model cannot be rebuilt ({_first_line(exc)})") from None
        problem = weights_mismatch(model.state_dict(), self.scoring_state_dict)
        if problem:
            raise UserError(f"checkpoint {where} does not fit its own model: {problem}")
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
        stored_hash = payload.get(CONTENT_HASH_KEY)
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
            stored_content_hash=str(stored_hash) if stored_hash else "",
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


# --------------------------------------------------------------------------- content hashes
CONTENT_HASH_KEY = "content_hash"
STATE_HASH_KEY = "state_hash"
# The payload keys a score depends on: what ``content_hash`` covers; the averaged weights too when
# a run keeps them (train.ema_decay), since they are the weights that score.
CONTENT_KEYS = ("model", "config", "normalization", "state_dict")
OPTIONAL_CONTENT_KEYS = ("ema_state_dict",)
HASH_ALGORITHM = "sha256"


def _feed(digest, value: Any) -> None:
    """Feed ``value`` to ``digest`` in one canonical form: every value tagged by kind and length,
    dict items sorted by key, lists and tuples alike, floats exact (hex), tensors as dtype, shape
    and raw bytes. Equal contents give equal hashes whatever the dict order or memory layout."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif value is None:
        digest.update(b"N")
    elif isinstance(value, bool):
        digest.update(b"B1" if value else b"B0")
    elif isinstance(value, int):
        digest.update(f"I{value};".encode())
    elif isinstance(value, float):
        digest.update(f"F{value.hex()};".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8")
        digest.update(f"S{len(data)}:".encode() + data)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    else:
        _feed(digest, plain(value))


def _hash(value: Any) -> str:
    digest = hashlib.sha256()
    _feed(digest, value)
    return f"{HASH_ALGORITHM}:{digest.hexdigest()}"


def content_hash(checkpoint: Checkpoint | dict[str, Any]) -> str:
    """``sha256:<hex>``: the SHA-256 of what a checkpoint's scores depend on, in a canonical form
    (model name and arguments, configuration, normalisation and threshold, and every weight
    tensor's name, dtype, shape and bytes). ``checkpoint`` is a :class:`Checkpoint` or the dict a
    file holds. Stored in every checkpoint and verified when one is loaded; an export of the model
    (ONNX) stores the same value to say which checkpoint it came from."""
    payload = checkpoint.to_payload() if isinstance(checkpoint, Checkpoint) else checkpoint
    content = {key: payload.get(key) for key in CONTENT_KEYS}
    content.update({key: payload[key] for key in OPTIONAL_CONTENT_KEYS if key in payload})
    return _hash(content)


def state_hash(payload: dict[str, Any], content: str) -> str:
    """The hash of everything else a file holds (optimiser states, RNG, history, ...) with its
    content hash: what resuming a run depends on beyond the model."""
    rest = {
        key: value
        for key, value in payload.items()
        if key not in CONTENT_KEYS + OPTIONAL_CONTENT_KEYS and key not in (CONTENT_HASH_KEY, STATE_HASH_KEY)
    }
    return _hash({"content_hash": content, "rest": rest})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def weights_mismatch(expected: dict[str, torch.Tensor], stored: dict[str, Any]) -> str:
    """What keeps ``stored`` weights from loading into a model whose own are ``expected``: the
    first wrong shape, missing or unexpected tensor, in one phrase; empty when they fit."""
    if not isinstance(stored, dict):
        return "its weights are not a mapping of tensors"
    for name, tensor in expected.items():
        if name not in stored:
            return f"weight {name} is missing"
        value = stored[name]
        if not isinstance(value, torch.Tensor):
            return f"weight {name} is not a tensor"
        if tuple(value.shape) != tuple(tensor.shape):
            return (
                f"weight {name} has shape {tuple(value.shape)} but the model its configuration "
                f"describes needs {tuple(tensor.shape)}"
            )
    extra = [name for name in stored if name not in expected]
    if extra:
        return f"weight {extra[0]} is not part of the model ({len(extra)} unexpected)"
    return ""


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically (the file is complete or absent), with its content hashes."""
    payload = checkpoint.to_payload()
    content = content_hash(payload)
    payload[CONTENT_HASH_KEY] = content
    payload[STATE_HASH_KEY] = state_hash(payload, content)
    save_torch(path, payload)


def _check_payload(payload: Any, path: Path) -> dict[str, Any]:
    """What every file read must pass before its values are used: the format, the version, and
    the content hashes when the file has them (files written before hashes were stored have none
    and are accepted)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a skipganomaly checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} is from a newer skipganomaly ({payload.get('package_version')}); upgrade"
        )
    stored_content, stored_state = payload.get(CONTENT_HASH_KEY), payload.get(STATE_HASH_KEY)
    if stored_content is None and stored_state is None:
        return payload  # legacy: written before content hashes (0.1.0)
    try:
        content = content_hash(payload)
        state = state_hash(payload, content)
    except Exception:  # a value no checkpoint holds: damaged beyond hashing
        content = state = "unhashable"
    if stored_content != content or stored_state != state:
        what = (
            "its weights, configuration or threshold" if stored_content != content else "its training state"
        )
        raise UserError(
            f"checkpoint {path} is corrupt: the content hash stored in it does not match {what}, so it was "
            "not used; take another copy, the run's other checkpoint (best.pt or last.pt), or train again"
        )
    return payload


def _unsafe(exc: BaseException) -> bool:
    """Whether torch refused the file because it holds Python objects (a pickle that could run
    code), as opposed to a damaged file."""
    return isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) or "Weights only" in str(exc)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint safely (no code runs), or raise a UserError naming the file: missing,
    unreadable, not a checkpoint this tool can open safely, corrupt (its content hash does not
    match), or weights that do not fit the model its configuration describes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, not a torch file, or a pickle of Python objects
        if _unsafe(exc):
            raise UserError(
                f"{path} is not a checkpoint this tool can load safely: it holds Python objects "
                "beyond tensors, numbers and strings, so it was not opened; use a checkpoint written "
                "by skipganomaly train"
            ) from None
        raise UserError(
            f"checkpoint {path} cannot be read ({_first_line(exc)}); it may be truncated or corrupt"
        ) from None
    payload = _check_payload(payload, path)
    try:
        checkpoint = Checkpoint.from_payload(payload)
    except UserError as exc:  # e.g. a stored setting this version does not accept
        raise UserError(f"checkpoint {path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"checkpoint {path} lacks or garbles a value it needs ({_first_line(exc)}); it is corrupt"
        ) from None
    checkpoint.source = str(path)
    if not checkpoint.stored_content_hash:
        checkpoint.stored_content_hash = content_hash(payload)
    _check_weights(checkpoint, path)
    return checkpoint


def _check_weights(checkpoint: Checkpoint, path: Path) -> None:
    """The stored weights fit the model the checkpoint's name and arguments describe (built on
    the meta device: shapes only, no memory, no time)."""
    try:
        with torch.device("meta"):
            model = build_model(checkpoint.model_name, **checkpoint.model_args)
    except UserError as exc:
        raise UserError(f"checkpoint {path}: {exc}") from None
    except Exception as exc:
        raise UserError(f"checkpoint {path}: its model cannot be rebuilt ({_first_line(exc)})") from None
    problem = weights_mismatch(model.state_dict(), checkpoint.state_dict)
    if problem:
        raise UserError(
            f"checkpoint {path} does not fit its own model: {problem}; it is corrupt or was edited"
        )


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def load_run_checkpoint(run_dir: str | os.PathLike, which: str = "best") -> Checkpoint:
    """The ``best`` or ``last`` checkpoint of a run folder, or a UserError naming the folder."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        if run_dir.suffix.lower() == ".onnx":
            raise UserError(
                f"--run {run_dir} is an exported model file, not a run folder; pass the run folder it "
                "was exported from, or score the file with 'skipganomaly serve --onnx FILE' or "
                "Detector.from_onnx(FILE)"
            )
        raise UserError(
            f"--run {run_dir} is a file, not a run folder; pass the --output folder of a training run "
            f"(the folder that holds checkpoints/{which}.pt)"
        )
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the --output folder of a training run")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass to --run the --output folder of a run that finished "
            "at least one epoch"
        )
    return load_checkpoint(path)


def resume_checkpoint_path(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run continues from: ``last.pt``, or ``best.pt`` where it is newer or the
    only one (a kill while ``last.pt`` was first written leaves ``best.pt`` alone; both hold the
    whole training state). None when the run has no checkpoint yet."""
    last, best = checkpoint_path(run_dir, "last"), checkpoint_path(run_dir, "best")
    if not best.is_file():
        return last if last.is_file() else None
    if not last.is_file():
        return best
    # best.pt is written before last.pt each epoch: a kill in between leaves best one epoch newer.
    return best if _epoch_of(best) > _epoch_of(last) else last


def _epoch_of(path: Path) -> int:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(payload.get("epoch", -1))
    except Exception:
        return -1

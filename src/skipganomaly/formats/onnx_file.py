"""The exported ONNX file: its metadata, its content hash, and reading both without ONNX or PyTorch.

``skipganomaly export`` writes one self-describing ``.onnx`` file (:mod:`skipganomaly.deploy.export`).
Everything needed to score without this package's training code sits in the model's own
``metadata_props``, so the file alone is the deployable artefact:

* ``skipganomaly`` (JSON): format and version, model name and arguments, image size, channels,
  the input (name, dtype, layout, value range), the preprocessing, the deployment normalisation
  (``low``, ``high``, ``threshold``, ``map_high``), the protocol, the package version that
  exported it, the checkpoint (``best``/``last``, epoch, SHA-256 of the file), the outputs and what
  each holds, and which graph rewrites were applied (BatchNorm folding, ...).
* ``content_sha256``: the SHA-256 of every byte of the model except its metadata (the graph, its
  weights, the opsets) **and of the metadata fields that change a decision** (:data:`DECISION_FIELDS`:
  the model, image size, channels, input, preprocessing, normalisation with its threshold, the
  score's lambda), through their per-field hashes (``decision_sha256``, one per field). A reader
  recomputes it and refuses a file that does not match, naming the edited field, so a truncated
  or altered graph, or a threshold edited to disagree with the graph, is caught before it scores
  anything. Other metadata (notes, dates, the export check's figures) may be edited freely; its
  structure is still checked (:func:`check_metadata`).
* a few flat keys (``image_size``, ``threshold``, ``protocol``, ...) so that a model viewer such
  as Netron shows the essentials without parsing JSON.

The file is read here with a few lines of protobuf wire format (an ONNX model is a protobuf
``ModelProto``: metadata is its field 14), so a scoring-only install needs neither the ``onnx``
package nor PyTorch: ONNX Runtime, numpy and Pillow are enough.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..specs.errors import UserError

FORMAT = "skipganomaly.onnx"
# 2: the content hash covers the decision fields of the metadata (1 covered the graph only).
FORMAT_VERSION = 2
METADATA_KEY = "skipganomaly"
HASH_KEY = "content_sha256"
FIELD_HASHES_KEY = "decision_sha256"
# The metadata that changes what a score or a decision is: covered by the content hash.
DECISION_FIELDS = (
    "model",
    "image_size",
    "channels",
    "input",
    "preprocessing",
    "normalization",
    "score_lambda",
)
# ModelProto field numbers (onnx.proto): metadata_props is a repeated StringStringEntryProto.
_METADATA_FIELD = 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


# --------------------------------------------------------------------------- protobuf wire format
def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes | memoryview):
    """Yield (field number, wire type, field start, payload start, end) of each top-level field of
    a protobuf message: ``data[field_start:end]`` is the whole encoded field (tag included), and
    for length-delimited fields ``data[payload_start:end]`` is its payload."""
    pos, n = 0, len(data)
    while pos < n:
        field_start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, end = _varint(data, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            end = pos + length
        elif wire == 5:
            end = pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if number == 0 or end > n:
            raise ValueError("truncated or malformed protobuf field")
        yield number, wire, field_start, pos, end
        pos = end


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def field_hashes(metadata: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each decision field's canonical JSON (a missing field hashes as null)."""
    return {key: hashlib.sha256(_canonical(metadata.get(key))).hexdigest() for key in DECISION_FIELDS}


def content_sha256(model_bytes: bytes, metadata: dict[str, Any] | None = None) -> str:
    """SHA-256 over every top-level field of the serialised ModelProto except its metadata
    (field 14), tags and lengths included: the graph with its weights, the opsets, the IR version
    and the producer; then, given ``metadata``, over the hashes of its decision fields
    (:func:`field_hashes`). Adding a metadata key or editing a note keeps the hash; any change to
    what computes the scores or decides on them changes it."""
    digest = hashlib.sha256()
    view = memoryview(model_bytes)
    for number, _, field_start, _, end in _fields(view):
        if number != _METADATA_FIELD:
            digest.update(view[field_start:end])
    if metadata is not None:
        digest.update(b"\0decisions\0" + _canonical(field_hashes(metadata)))
    return digest.hexdigest()


def read_metadata_props(model_bytes: bytes) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (the last value wins for a repeated key)."""
    props: dict[str, str] = {}
    view = memoryview(model_bytes)
    for number, wire, _, start, end in _fields(view):
        if number != _METADATA_FIELD or wire != 2:
            continue
        key = value = ""
        entry = view[start:end]
        for inner, inner_wire, _, s, e in _fields(entry):
            if inner_wire != 2:
                continue
            text = bytes(entry[s:e]).decode("utf-8")
            if inner == _ENTRY_KEY:
                key = text
            elif inner == _ENTRY_VALUE:
                value = text
        props[key] = value
    return props


# --------------------------------------------------------------------------- the metadata
@dataclass(frozen=True)
class ExportedModel:
    """An exported file read and checked: its bytes (for ONNX Runtime) and its metadata."""

    path: Path | None
    model_bytes: bytes
    metadata: dict[str, Any]
    content_sha256: str

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def channels(self) -> int:
        return int(self.metadata["channels"])

    @property
    def input(self) -> dict[str, Any]:
        return self.metadata["input"]

    @property
    def normalization(self) -> dict[str, Any]:
        return self.metadata["normalization"]

    @property
    def threshold(self) -> float:
        return float(self.metadata["normalization"]["threshold"])

    @property
    def quantization(self) -> dict[str, Any] | None:
        return self.metadata.get("quantization")

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` and ``Detector.info`` report."""
        m = self.metadata
        return {
            "model": m["model"]["name"],
            "model_args": m["model"]["args"],
            "image_size": m["image_size"],
            "channels": m["channels"],
            "input": m["input"],
            "preprocessing": m["preprocessing"],
            "normalization": m["normalization"],
            "threshold": self.threshold,
            "protocol": m["protocol"],
            "checkpoint": m["checkpoint"],
            "package_version": m["package_version"],
            "exported_at": m.get("exported_at"),
            "graph_rewrites": m.get("graph_rewrites", []),
            "quantization": m.get("quantization"),
            "outputs": m["outputs"],
            # How raw_score is made of the terms, and the training domain (absent in older exports).
            "score_terms": m.get("score_terms"),
            "score_lambda": m.get("score_lambda"),
            "domain": m.get("domain"),
            "content_sha256": self.content_sha256,
            "size_bytes": len(self.model_bytes),
            "file": None if self.path is None else str(self.path),
        }


def metadata_props(metadata: dict[str, Any], content_hash: str) -> dict[str, str]:
    """The key/value strings an exported model carries (see the module docstring)."""
    props = {
        METADATA_KEY: json.dumps(metadata, sort_keys=True),
        HASH_KEY: content_hash,
        FIELD_HASHES_KEY: json.dumps(field_hashes(metadata), sort_keys=True),
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model": metadata["model"]["name"],
        "image_size": str(metadata["image_size"]),
        "channels": str(metadata["channels"]),
        "threshold": repr(float(metadata["normalization"]["threshold"])),
        "protocol": metadata["protocol"],
        "package_version": metadata["package_version"],
    }
    return props


def parse_exported(model_bytes: bytes, path: Path | None = None) -> ExportedModel:
    """Check and describe an exported model's bytes, or raise a UserError naming the file (and the
    field, for metadata that is malformed, edited, or disagrees with its flat copy)."""
    where = str(path) if path is not None else "the model"
    try:
        props = read_metadata_props(model_bytes)
        content_sha256(model_bytes)  # a malformed protobuf fails here, before anything else
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} is not a readable ONNX file ({exc}); it may be truncated") from None
    if props.get("format") != FORMAT or METADATA_KEY not in props:
        raise UserError(
            f"{where} is not a skipganomaly export (no '{METADATA_KEY}' metadata); export one with "
            "'skipganomaly export --run RUN_DIR --format onnx'"
        )
    try:
        metadata = json.loads(props[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError):
        raise UserError(
            f"{where}: its '{METADATA_KEY}' metadata is not valid JSON; export it again"
        ) from None
    check_metadata(metadata, where)
    version = metadata["format_version"]
    if version > FORMAT_VERSION:
        raise UserError(
            f"{where} is format version {version}, from a newer skipganomaly "
            f"({metadata.get('package_version')}); upgrade"
        )
    if version < FORMAT_VERSION:
        raise UserError(
            f"{where} is format version {version}, whose content hash does not cover its threshold "
            "and preprocessing; export it again with this version ('skipganomaly export --run RUN_DIR')"
        )
    expected = props.get(HASH_KEY, "")
    actual = content_sha256(model_bytes, metadata)
    if expected != actual:
        edited = _edited_fields(props.get(FIELD_HASHES_KEY), metadata)
        if edited:
            raise UserError(
                f"{where}: its metadata field {', '.join(repr(f) for f in edited)} was changed after "
                "export and no longer matches the graph (content check failed); export it again"
            )
        raise UserError(
            f"{where} fails its content check (SHA-256 {actual[:12]}... != recorded {expected[:12]}...); "
            "the file is damaged or was altered: export it again"
        )
    _check_flat_copies(props, metadata, where)  # outside the hash: they must say the same
    return ExportedModel(path=path, model_bytes=model_bytes, metadata=metadata, content_sha256=actual)


def _edited_fields(recorded: str | None, metadata: dict[str, Any]) -> list[str]:
    """The decision fields whose hash differs from the one recorded at export ([] if unknown)."""
    try:
        stored = json.loads(recorded or "{}")
    except json.JSONDecodeError:
        return []
    if not isinstance(stored, dict):
        return []
    now = field_hashes(metadata)
    return [key for key in DECISION_FIELDS if key in stored and stored[key] != now[key]]


def _check_flat_copies(props: dict[str, str], metadata: dict[str, Any], where: str) -> None:
    """The flat keys a model viewer shows must say what the JSON says."""
    copies = {
        "image_size": str(metadata["image_size"]),
        "channels": str(metadata["channels"]),
        "threshold": repr(float(metadata["normalization"]["threshold"])),
    }
    for key, value in copies.items():
        if key in props and props[key] != value:
            raise UserError(
                f"{where}: its metadata field '{key}' says {props[key]} but the '{METADATA_KEY}' "
                f"metadata says {value}; the file was altered: export it again"
            )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_metadata(metadata: Any, where: str) -> None:
    """The structure every reader relies on, checked before anything uses it: one UserError naming
    the file and the first field that is missing or of the wrong kind."""

    def bad(field: str, what: str) -> UserError:
        return UserError(f"{where}: its metadata field '{field}' {what}; export it again")

    if not isinstance(metadata, dict):
        raise bad(METADATA_KEY, f"is a JSON {type(metadata).__name__}, not an object")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("format_version", "is missing or not a positive integer")
    for key, kind in (
        ("model", dict),
        ("input", dict),
        ("preprocessing", dict),
        ("normalization", dict),
        ("checkpoint", dict),
        ("outputs", list),
        ("protocol", str),
        ("package_version", str),
    ):
        if not isinstance(metadata.get(key), kind):
            raise bad(key, f"is missing or not a JSON {'object' if kind is dict else kind.__name__}")
    if not isinstance(metadata["model"].get("name"), str) or not isinstance(
        metadata["model"].get("args"), dict
    ):
        raise bad("model", "needs a name and args")
    size = metadata.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 256 or size & (size - 1):
        raise bad("image_size", f"is {size!r}, not a power of two from 16 to 256")
    if metadata.get("channels") not in (1, 3) or isinstance(metadata.get("channels"), bool):
        raise bad("channels", f"is {metadata.get('channels')!r}, not 1 or 3")
    if metadata["input"].get("dtype") not in ("uint8", "float32"):
        raise bad("input.dtype", f"is {metadata['input'].get('dtype')!r}, not uint8 or float32")
    if not isinstance(metadata["input"].get("name"), str):
        raise bad("input.name", "is missing")
    norm = metadata["normalization"]
    for key in ("low", "high", "threshold", "map_high"):
        if not _finite(norm.get(key)):
            raise bad(f"normalization.{key}", f"is {norm.get(key)!r}, not a finite number")
    if not norm["high"] > norm["low"]:
        raise bad("normalization.high", "is not above normalization.low")
    if "score_lambda" in metadata and not _finite(metadata["score_lambda"]):
        raise bad("score_lambda", "is not a finite number")
    for k, output in enumerate(metadata["outputs"]):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise bad(f"outputs[{k}]", "has no name")


def read_exported(path: str | os.PathLike) -> ExportedModel:
    """Read and check an exported ``.onnx`` file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass an exported .onnx file")
    if not path.is_file():
        raise UserError(f"{path} does not exist; export a run with 'skipganomaly export --run RUN_DIR'")
    return parse_exported(path.read_bytes(), path)


# --------------------------------------------------------------------------- a run's export
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (the checkpoint an export came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_exported_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a skipganomaly export (its format key), intact or not: the file an
    export may replace (runtime/outputs.py)."""
    path = Path(path)
    if path.stat().st_size > 4 << 30:
        return False
    try:
        return read_metadata_props(path.read_bytes()).get("format") == FORMAT
    except (ValueError, UnicodeDecodeError):
        return False


def default_export_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Where ``export`` writes by default and where ``predict --engine onnx``, ``serve --run`` and
    ``Detector.from_run`` look: ``RUN_DIR/exports/<which>.onnx``."""
    return Path(run_dir) / "exports" / f"{which}.onnx"

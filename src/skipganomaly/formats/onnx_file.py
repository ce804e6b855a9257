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
  weights, the opsets). A reader recomputes it and refuses a file that does not match, so a
  truncated or altered graph is caught before it scores anything.
* a few flat keys (``image_size``, ``threshold``, ``protocol``, ...) so that a model viewer such
  as Netron shows the essentials without parsing JSON.

The file is read here with a few lines of protobuf wire format (an ONNX model is a protobuf
``ModelProto``: metadata is its field 14), so a scoring-only install needs neither the ``onnx``
package nor PyTorch: ONNX Runtime, numpy and Pillow are enough.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..specs.errors import UserError

FORMAT = "skipganomaly.onnx"
FORMAT_VERSION = 1
METADATA_KEY = "skipganomaly"
HASH_KEY = "content_sha256"
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


def content_sha256(model_bytes: bytes) -> str:
    """SHA-256 over every top-level field of the serialised ModelProto except its metadata
    (field 14), tags and lengths included: the graph with its weights, the opsets, the IR version
    and the producer. Adding or editing metadata keeps the hash; any change to what computes the
    scores changes it."""
    digest = hashlib.sha256()
    view = memoryview(model_bytes)
    for number, _, field_start, _, end in _fields(view):
        if number != _METADATA_FIELD:
            digest.update(view[field_start:end])
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
            "content_sha256": self.content_sha256,
            "size_bytes": len(self.model_bytes),
            "file": None if self.path is None else str(self.path),
        }


def metadata_props(metadata: dict[str, Any], content_hash: str) -> dict[str, str]:
    """The key/value strings an exported model carries (see the module docstring)."""
    props = {
        METADATA_KEY: json.dumps(metadata, sort_keys=True),
        HASH_KEY: content_hash,
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
    """Check and describe an exported model's bytes, or raise a UserError naming the file."""
    where = str(path) if path is not None else "the model"
    try:
        props = read_metadata_props(model_bytes)
        actual = content_sha256(model_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} is not a readable ONNX file ({exc}); it may be truncated") from None
    if props.get("format") != FORMAT or METADATA_KEY not in props:
        raise UserError(
            f"{where} is not a skipganomaly export (no '{METADATA_KEY}' metadata); export one with "
            "'skipganomaly export --run RUN_DIR --format onnx'"
        )
    try:
        metadata = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError:
        raise UserError(
            f"{where}: its '{METADATA_KEY}' metadata is not valid JSON; export it again"
        ) from None
    version = int(metadata.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise UserError(
            f"{where} is format version {version}, from a newer skipganomaly "
            f"({metadata.get('package_version')}); upgrade"
        )
    expected = props.get(HASH_KEY, "")
    if expected != actual:
        raise UserError(
            f"{where} fails its content check (SHA-256 {actual[:12]}... != recorded {expected[:12]}...); "
            "the file is damaged or was altered: export it again"
        )
    return ExportedModel(path=path, model_bytes=model_bytes, metadata=metadata, content_sha256=actual)


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


def read_exported(path: str | os.PathLike) -> ExportedModel:
    """Read and check an exported ``.onnx`` file."""
    path = Path(path)
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


def default_export_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Where ``export`` writes by default and where ``predict --engine onnx``, ``serve --run`` and
    ``Detector.from_run`` look: ``RUN_DIR/exports/<which>.onnx``."""
    return Path(run_dir) / "exports" / f"{which}.onnx"

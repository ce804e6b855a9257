"""A run's log: JSON lines in ``RUN_DIR/log.jsonl`` (per-step losses, per-epoch metrics, events),
mirrored to TensorBoard when it is installed (:mod:`.tensorboard`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class RunLog:
    """JSON lines in ``RUN_DIR/log.jsonl``: per-step losses and per-epoch metrics; ``mirror``
    (TensorBoard, when installed) receives every record too. With no path (processes other than
    rank 0) it writes nothing."""

    def __init__(self, path: Path | None, mirror: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.mirror = mirror

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")
        if self.mirror is not None:
            self.mirror(record)

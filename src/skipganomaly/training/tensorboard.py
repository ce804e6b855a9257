"""TensorBoard event files beside ``log.jsonl``, when the optional ``tensorboard`` extra is installed.

The JSON lines stay the record of a run; this mirrors the same records into
``RUN_DIR/tensorboard/`` so ``tensorboard --logdir RUNS`` can show them: per-step losses
(``loss/<term>`` against the training iteration), per-epoch means (``epoch/<term>``), the
learning rate and the validation, test and paper-protocol AUROC against the epoch.
Without ``tensorboard`` importable nothing is written and nothing fails.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

EVENTS_DIR = "tensorboard"


def _summary_writer_class():
    """torch's SummaryWriter, or None when ``tensorboard`` is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class EventMirror:
    """Receives every ``log.jsonl`` record and writes its numbers as TensorBoard scalars."""

    def __init__(self, writer, steps_per_epoch: int):
        self.writer = writer
        self.steps_per_epoch = max(int(steps_per_epoch), 1)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return
        self.writer.add_scalar(tag, float(value), step)

    def __call__(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "step":
            iteration = (record["epoch"] - 1) * self.steps_per_epoch + record["step"]
            for key, value in record.items():
                if key not in ("event", "epoch", "step"):
                    self._scalar(f"loss/{key}", value, iteration)
        elif event == "epoch":
            epoch = record["epoch"]
            for key, value in record.get("losses", {}).items():
                self._scalar(f"epoch/{key}", value, epoch)
            self._scalar("epoch/lr", record.get("lr"), epoch)
            self._scalar("epoch/seconds", record.get("seconds"), epoch)
            for part in ("val", "test", "paper"):
                self._scalar(f"{part}/auroc", (record.get(part) or {}).get("auroc"), epoch)
            self.writer.flush()  # an interrupted run keeps its curves
        elif event == "d_reinit":
            iteration = (record["epoch"] - 1) * self.steps_per_epoch + record["step"]
            self._scalar("loss/d_at_reinit", record.get("d"), iteration)
        elif event == "end":
            self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def open_event_mirror(run_dir: str | Path, steps_per_epoch: int) -> EventMirror | None:
    """An :class:`EventMirror` writing into ``RUN_DIR/tensorboard``, or None without tensorboard."""
    writer_class = _summary_writer_class()
    if writer_class is None:
        return None
    return EventMirror(writer_class(log_dir=str(Path(run_dir) / EVENTS_DIR)), steps_per_epoch)

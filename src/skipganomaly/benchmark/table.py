"""What the benchmark prints: the machine it ran on (``machine_description``), the header and
the table of figures."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from ..runtime.precision import cpu_has_native_bf16


def machine_description() -> dict[str, Any]:
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model_name,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def format_header(header: dict[str, Any]) -> str:
    threads = header["threads"]
    busy = header.get("busy") or {"processes": 0}
    lines = [
        f"machine: {header['cpu']} ({header['cores']} cores, {header['cpu_capability']}, "
        f"native bf16: {'yes' if header['native_bf16'] else 'no'})"
        + (f"; GPU {header['gpu']}" if "gpu" in header else ""),
        f"torch {header['torch']}, python {header['python']}, device {header['device']}, "
        f"load average {', '.join(f'{v:.1f}' for v in header['load_average'] or [])}"
        + (
            f", {busy['processes']} busy process{'es' if busy['processes'] != 1 else ''} ({busy['kind']}) beside"
            if busy["processes"]
            else ""
        ),
        f"threads: plain {threads['plain']} (PyTorch's default unless --threads); optimised {header['threads_reason']}",
        f"plain: {header['plain_dtype']}; optimised: {header['optimised_dtype']}, channels_last "
        f"{'on' if header['channels_last'] else 'off'}; training batch {header['batch_size']}, scoring batch "
        f"{header['score_batch_size']['plain']} (plain) / {header['score_batch_size']['optimised']} (optimised)",
        f"protocol: {header['protocol']}",
    ]
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    rows = [
        f"{'size':>5}  {'task':<6} {'plain img/s':>12} {'optimised img/s':>16} {'ratio':>6} "
        f"{'plain peak MiB':>15} {'optimised peak MiB':>19}  threads plain/optimised"
    ]

    def number(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    for result in report["results"]:
        for task in ("train", "score"):
            rows.append(
                f"{result['size']:>5}  {task:<6} {number(result.get(f'{task}_plain_img_s')):>12} "
                f"{number(result.get(f'{task}_optimised_img_s')):>16} {number(result.get(f'{task}_ratio'), 2):>6} "
                f"{number(result.get(f'{task}_plain_peak_mib'), 0):>15} "
                f"{number(result.get(f'{task}_optimised_peak_mib'), 0):>19}  "
                f"{result.get('plain_threads', '-')}/{_span(result.get('optimised_threads') or [])}"
            )
    for result in report["results"]:
        if result.get("corruption_share") is not None:
            rows.append(
                f"synthetic anomalies at {result['size']} px (train.corruptions, three families, half of each "
                f"batch): {100 * result['corruption_share']:.1f}% of an optimised training step (median of paired rounds)"
            )
    loads = [report["machine"].get(k) for k in ("load_average", "load_average_end")]
    if all(loads):
        rows.append(
            f"load average (1, 5, 15 min) at the start {_loads(loads[0])}, at the end {_loads(loads[1])}"
        )
    return "\n".join(rows)


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _loads(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)

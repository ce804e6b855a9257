"""``skipganomaly benchmark``: training and scoring throughput, plain versus optimised, side by side.

Both modes run the same networks (same sizes, same initial weights) on the same synthetic images
in one process, their timed rounds interleaved (plain, optimised, plain, ...), so a busy machine
slows both alike and the ratio holds. Each figure is the median over ``repeats`` rounds after
``warmup`` rounds.

* **plain**: the straightforward implementation, as the official code does it: fp32, eager,
  contiguous tensors, the library convolutions throughout, PyTorch's default Adam; images decoded
  per item into float tensors by a ``DataLoader``; a training step with three discriminator passes
  (D(x), D(x_hat) for the generator, then D(x_hat.detach()) again for the discriminator, each
  network's loss back-propagated into both networks); scoring under ``no_grad`` in batches of 64
  with two discriminator passes.
* **optimised**: what ``skipganomaly train`` and ``predict`` run: ``Trainer.train_epoch`` and
  ``scoring.score_set`` with the chosen precision, memory format and threads; images preloaded as
  one uint8 tensor; one D pass per input; fused Adam; 1x1 and 2x2 maps as matrix products;
  ``inference_mode`` and one D pass over [x; x_hat] for scoring.

Threads: the plain mode runs with PyTorch's default (one per core), as the official code does;
the optimised mode with the count ``skipganomaly train`` would choose (``runtime.ThreadChooser``:
the free cores, re-checked as it runs). ``--threads N`` fixes both.

``busy`` > 0 starts that many busy processes beside the measurement (``BusyProcesses``: each
spins one core, or with ``busy_kind="train"`` trains a copy of the model on one thread), so the
figures show what a shared machine does to each mode.

Peak memory is measured for each mode in a fresh child process (peak RSS on a CPU, peak allocated
memory on a GPU), so one mode's allocations do not hide in the other's.
"""

from __future__ import annotations

from .busy import BUSY_KINDS, BusyProcesses, busy_training_step

# Importing .measure records PyTorch's own thread count (its _DEFAULT_THREADS) when this package is
# first imported, before a ThreadChooser changes it.
from .measure import (
    MAX_SETTLING_ROUNDS,
    _child_peak,
    measure_size,
    plain_thread_count,
    run_benchmark,
)
from .modes import (
    BenchmarkSettings,
    OptimisedMode,
    PerItemImages,
    PlainMode,
    synthetic_images,
    synthetic_splits,
)
from .table import format_header, format_table, machine_description

__all__ = [
    "BUSY_KINDS",
    "MAX_SETTLING_ROUNDS",
    "BenchmarkSettings",
    "BusyProcesses",
    "OptimisedMode",
    "PerItemImages",
    "PlainMode",
    "_child_peak",
    "busy_training_step",
    "format_header",
    "format_table",
    "machine_description",
    "measure_size",
    "plain_thread_count",
    "run_benchmark",
    "synthetic_images",
    "synthetic_splits",
]

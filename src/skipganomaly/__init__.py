"""skipganomaly: Skip-GANomaly for unsupervised image anomaly detection."""

import os
import sys

__version__ = "0.1.0"

# OpenMP threads that find no work spin-wait by default. On a machine whose cores are shared with
# other processes (CI runners, shared servers, several torchrun processes) a spinning thread holds
# a core its partner needs, and a 2-thread run of this package was measured 10-30x slower than
# with passive waiting (docs/speed.md). Passive waiting costs little when the cores are free.
# It only takes effect if PyTorch is not loaded yet; an explicit OMP_WAIT_POLICY always wins.
# Whether it did is what runtime.openmp_wait_policy reports.
TORCH_LOADED_FIRST = "torch" in sys.modules
OMP_WAIT_POLICY_GIVEN = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

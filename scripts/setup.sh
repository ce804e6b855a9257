#!/usr/bin/env bash
# Create .venv and install skipganomaly with its training dependencies ([train], inside [dev]) and
# its test tools. PyTorch comes first, pinned to the
# CPU build this project is tested with (TORCH_SPEC overrides it, e.g. TORCH_SPEC="torch" for the
# newest release from PyPI, or a CUDA build from pytorch.org).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import skipganomaly, torch; print(f'skipganomaly {skipganomaly.__version__} with torch {torch.__version__} ready in .venv')"

"""``skipganomaly.detector``, the documented import path of the deployment API (README.md): the
code lives in :mod:`skipganomaly.deploy.detector`. No PyTorch is imported."""

from .deploy.detector import *  # noqa: F403
from .deploy.detector import __all__  # noqa: F401

"""``skipganomaly.predict``, the documented import path of the PyTorch scorer (docs/usage.md): the
code lives in :mod:`skipganomaly.deploy.predict`."""

from .deploy.predict import *  # noqa: F403
from .deploy.predict import __all__  # noqa: F401

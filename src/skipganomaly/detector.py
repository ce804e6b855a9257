"""``skipganomaly.detector``, the documented import path of the deployment API (README.md): the
code lives in :mod:`skipganomaly.deploy.detector`. No PyTorch is imported."""

from .deploy.detector import DeploymentScale, Detector, OnnxEngine, TorchEngine, to_uint8_image
from .deploy.prediction import Prediction

__all__ = ["Detector", "Prediction", "DeploymentScale", "OnnxEngine", "TorchEngine", "to_uint8_image"]

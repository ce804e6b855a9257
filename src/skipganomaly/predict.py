"""``skipganomaly.predict``, the documented import path of the PyTorch scorer (docs/usage.md): the
code lives in :mod:`skipganomaly.deploy.predict`."""

from .data.images import collect_image_paths, is_image_file
from .deploy.predict import Predictor, predict_to_csv, skipped_list_path
from .deploy.prediction import Prediction
from .runtime.files import partial_path

__all__ = [
    "Predictor",
    "Prediction",
    "predict_to_csv",
    "collect_image_paths",
    "is_image_file",
    "partial_path",
    "skipped_list_path",
]

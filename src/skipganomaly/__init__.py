"""skipganomaly: Skip-GANomaly for unsupervised image anomaly detection."""

__version__ = "0.1.0"

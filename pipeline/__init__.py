"""Reproducible binary classification: DVC stages, Optuna tuning, MLflow tracking, PyTorch."""

__version__ = "0.1.0"

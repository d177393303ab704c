"""Reproducible binary classification: DVC stages, Optuna tuning, MLflow tracking, PyTorch."""


"""Reproducible binary classification: DVC stages, Optuna tuning, MLflow tracking, PyTorch."""

# The one import-time effect in the package, on purpose: every way into our code (a stage, the
# predict CLI, a spawned tuning worker, the MLflow pyfunc loaded by code path, the tests) imports
# this file before it can run a tensor operation, which is when torch, oneDNN and MKL read their
# dispatch variables. It only sets environment variables (pipeline/core/cpu.py says which and why).
from pipeline.core.cpu import pin_kernels

pin_kernels()

"""MLflow models-from-code entry point: the artifact is this code + weights + JSON metadata."""

import mlflow

from pipeline.registry.serving import RawInputClassifier

mlflow.models.set_model(RawInputClassifier())

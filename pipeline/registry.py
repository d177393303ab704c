"""Model registry: log the raw-input pyfunc, register a version, champion/challenger gate."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import serving
from pipeline.config import RegisterConfig
from pipeline.metrics import LOWER_IS_BETTER, binary_metrics
from pipeline.models import CONFIG_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
CHAMPION, CHALLENGER = "champion", "challenger"


def log_raw_model(model_dir: str | Path, meta_path: str | Path, threshold: float,
                  example: pd.DataFrame) -> mlflow.models.model.ModelInfo:
    """Log the pyfunc (models-from-code) with weights, preprocessing metadata and threshold."""
    import torch

    meta = json.loads(Path(meta_path).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        serving_json = Path(tmp) / "serving.json"
        serving_json.write_text(json.dumps({"threshold": threshold, "classes": meta["classes"]}))
        artifacts = {"weights": str(Path(model_dir) / WEIGHTS_FILE),
                     "model_config": str(Path(model_dir) / CONFIG_FILE),
                     "meta": str(meta_path), "serving": str(serving_json)}
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(PACKAGE_DIR / "pyfunc_model.py"),
            code_paths=[str(PACKAGE_DIR)], artifacts=artifacts,
            signature=serving.signature(meta), input_example=example,
            # Pinned explicitly: inference of requirements is slow and may guess wrong.
            pip_requirements=[f"mlflow=={mlflow.__version__}",
                              f"torch=={torch.__version__.split('+')[0]}", "safetensors",
                              "pandas", "numpy", "pillow", "scikit-learn", "pyyaml"],
            metadata={"pipeline": model_contract(meta, threshold)})


def model_contract(meta: dict[str, Any], threshold: float) -> dict[str, Any]:
    """What a caller needs to build inputs: kind, classes, image geometry or CSV columns."""
    contract: dict[str, Any] = {"kind": meta["kind"], "classes": meta["classes"],
                                "threshold": threshold}
    if meta["kind"] == "image":
        contract["image"] = {"size": meta["image"]["size"],
                             "channels": meta["image"]["channels"]}
    else:
        table = meta["table"]
        contract["table"] = {"columns": table["columns"], "dtypes": table.get("dtypes", {}),
                             "target": table["target"]}
    return contract


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding the champion alias, if any."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def score(model_uri: str, frame: pd.DataFrame, y: np.ndarray, positive: str,
          metric: str) -> float:
    """Score a registered pyfunc on raw rows with its own preprocessing and threshold."""
    out = mlflow.pyfunc.load_model(model_uri).predict(frame)
    probs = out["probability"].to_numpy(dtype=np.float64)
    # Threshold metrics use the model's own labels, so each model keeps its own threshold.
    labels = (out["label"].to_numpy() == positive)
    metrics = binary_metrics(y, probs, 0.5)
    pred = labels.astype(int)
    threshold_metrics = binary_metrics(y, pred.astype(np.float64), 0.5)
    for key in ("accuracy", "f1", "precision", "recall", "balanced_accuracy", "mcc"):
        metrics[key] = threshold_metrics[key]
    return float(metrics[metric])


@dataclass(frozen=True)
class Decision:
    """Outcome of the quality gate for one challenger."""

    promote: bool
    reason: str
    metric: str
    challenger_score: float
    champion_score: float | None
    champion_version: str | None


def decide(cfg: RegisterConfig, challenger_score: float, champion_score: float | None,
           champion_version: str | None, champion_error: str | None = None) -> Decision:
    """Promote if there is no champion, it cannot score current data, or the margin is met."""
    metric = cfg.metric
    if champion_version is None:
        return Decision(True, "first version: no champion yet", metric, challenger_score, None,
                        None)
    if champion_score is None:
        return Decision(True, f"champion v{champion_version} cannot score the current test "
                        f"split ({champion_error})", metric, challenger_score, None,
                        champion_version)
    gain = (champion_score - challenger_score if metric in LOWER_IS_BETTER
            else challenger_score - champion_score)
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    verdict = (f"test {metric} {challenger_score:.6f} vs champion v{champion_version} "
               f"{champion_score:.6f} ({direction} is better): improvement {gain:+.6f}")
    if gain >= cfg.min_improvement and gain > 0:
        return Decision(True, f"{verdict} >= min_improvement {cfg.min_improvement}", metric,
                        challenger_score, champion_score, champion_version)
    return Decision(False, f"{verdict} < required {max(cfg.min_improvement, 0):g} "
                    "(and must be > 0)", metric, challenger_score, champion_score,
                    champion_version)


def record(client: MlflowClient, name: str, version: str, decision: Decision) -> list[dict]:
    """Tag the version with the decision, move aliases, and append to the audit trail."""
    tags = {"decision": "promoted" if decision.promote else "rejected",
            "decision_reason": decision.reason, "gate_metric": decision.metric,
            "challenger_score": f"{decision.challenger_score:.6f}",
            "champion_score": "none" if decision.champion_score is None
            else f"{decision.champion_score:.6f}",
            "compared_to_version": decision.champion_version or "none"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    model = client.get_registered_model(name)
    n = sum(1 for key in model.tags if key.startswith("audit."))
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": version,
             "champion_before": decision.champion_version,
             "champion_after": version if decision.promote else decision.champion_version,
             **asdict(decision)}
    client.set_registered_model_tag(name, f"audit.{n + 1:05d}", json.dumps(entry))
    return audit_trail(client, name)


def audit_trail(client: MlflowClient, name: str) -> list[dict]:
    """Every gate decision for `name`, oldest first (from registered-model tags)."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith("audit."))]


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """Create (if needed) the registered model and a new version from a logged model URI."""
    client = MlflowClient()
    try:
        client.create_registered_model(name, description="Binary classifier on raw inputs; "
                                       "aliases: champion (serving), challenger (latest).")
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(
                err):
            raise
    version = mlflow.register_model(model_uri, name, tags=tags)
    return version

"""Model registry: log the raw-input pyfunc, register a version, champion/challenger gate.

The gate (read champion, score, decide, move aliases, append to the audit trail) runs under a
lock per registered model that every teammate's process sees (`locks.team_lock`), so concurrent
registrations are gated one after another and the audit trail stays one linear chain.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from pipeline import serving, tracking
from pipeline.config import RegisterConfig
from pipeline.dataset import DatasetMeta, Split
from pipeline.errors import PipelineError
from pipeline.locks import team_lock
from pipeline.metrics import binary_metrics, direction, improvement
from pipeline.models import CONFIG_FILE, WEIGHTS_FILE
from pipeline.tags import Tag

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
CHAMPION, CHALLENGER = "champion", "challenger"
# The logged-model tag through which the MLflow UI links a logged model to its versions.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
# Test metrics copied onto each version as tags, for the registry UI.
VERSION_METRICS = ("accuracy", "f1", "roc_auc", "average_precision", "log_loss", "brier")


def log_raw_model(model_dir: str | Path, meta_path: str | Path, meta: DatasetMeta,
                  threshold: float, example: pd.DataFrame) -> ModelInfo:
    """Log the pyfunc (models-from-code) with weights, metadata and threshold."""
    with tempfile.TemporaryDirectory() as tmp:
        serving_json = Path(tmp) / "serving.json"
        serving_json.write_text(json.dumps({"threshold": threshold,
                                            "classes": list(meta.classes)}))
        artifacts = {"weights": str(Path(model_dir) / WEIGHTS_FILE),
                     "model_config": str(Path(model_dir) / CONFIG_FILE),
                     "meta": str(meta_path), "serving": str(serving_json)}
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PACKAGE_DIR / "pyfunc_model.py"),
            code_paths=[str(PACKAGE_DIR)], artifacts=artifacts,
            signature=serving.signature(meta), input_example=example,
            # Pinned explicitly: inference of requirements is slow and may guess wrong.
            pip_requirements=[f"mlflow=={mlflow.__version__}",
                              f"torch=={torch.__version__.split('+')[0]}", "safetensors",
                              "pandas", "numpy", "pillow", "scikit-learn", "pyyaml"],
            metadata={"pipeline": serving.contract(meta, threshold)})
    return info


def aliased(client: MlflowClient, name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """The version holding `alias` (the champion by default), if any."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def score(model_uri: str, frame: pd.DataFrame, y: np.ndarray, positive: str,
          metric: str) -> float:
    """Score a registered pyfunc on raw rows with its own preprocessing and threshold."""
    out = mlflow.pyfunc.load_model(model_uri).predict(frame)
    probs = out["probability"].to_numpy(dtype=np.float64)
    metrics = binary_metrics(y, probs, 0.5)
    # Threshold metrics use the model's own labels, so each model keeps its own threshold.
    labels = (out["label"].to_numpy() == positive).astype(np.float64)
    labelled = binary_metrics(y, labels, 0.5)
    for key in ("accuracy", "f1", "precision", "recall", "balanced_accuracy", "mcc"):
        metrics[key] = labelled[key]
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
    gain = improvement(metric, challenger_score, champion_score)
    better = "lower" if direction(metric) == "minimize" else "higher"
    verdict = (f"test {metric} {challenger_score:.6f} vs champion v{champion_version} "
               f"{champion_score:.6f} ({better} is better): improvement {gain:+.6f}")
    if gain >= cfg.min_improvement and gain > 0:
        return Decision(True, f"{verdict} >= min_improvement {cfg.min_improvement}", metric,
                        challenger_score, champion_score, champion_version)
    return Decision(False, f"{verdict} < required {cfg.min_improvement:g} (and must be > 0)",
                    metric, challenger_score, champion_score, champion_version)


def gate(client: MlflowClient, cfg: RegisterConfig, challenger: float, frame: pd.DataFrame,
         y: np.ndarray, positive: str) -> Decision:
    """Score the champion through its own pyfunc on today's test rows; decide (under the lock)."""
    current = aliased(client, cfg.model_name)
    if current is None:
        return decide(cfg, challenger, None, None)
    try:
        # By number, not alias: the decision names exactly the version that was scored.
        best = score(f"models:/{cfg.model_name}/{current.version}", frame, y, positive,
                     cfg.metric)
    # An old champion whose artifacts are gone (OSError, MlflowException) or whose contract no
    # longer fits today's data (PipelineError: other columns, image geometry) cannot compete.
    except (MlflowException, PipelineError, OSError) as err:
        return decide(cfg, challenger, None, str(current.version),
                      f"{type(err).__name__}: {str(err)[:300]}")
    return decide(cfg, challenger, best, str(current.version))


def record(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Tag the version with the decision, move aliases, and append to the audit trail."""
    tags = {"decision": "promoted" if decision.promote else "rejected",
            "decision_reason": decision.reason, "gate_metric": decision.metric,
            "challenger_score": f"{decision.challenger_score:.6f}",
            "champion_score": "none" if decision.champion_score is None
            else f"{decision.champion_score:.6f}",
            "compared_to_version": decision.champion_version or "none"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    latest = aliased(client, name, CHALLENGER)
    # Gates run in lock order, not version order: the challenger alias only moves forward.
    if latest is None or int(latest.version) < int(version):
        client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    n = sum(1 for key in client.get_registered_model(name).tags if key.startswith("audit."))
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": version,
             "champion_before": decision.champion_version,
             "champion_after": version if decision.promote else decision.champion_version,
             **asdict(decision)}
    client.set_registered_model_tag(name, f"audit.{n + 1:05d}", json.dumps(entry))


def audit_trail(client: MlflowClient, name: str) -> list[dict]:
    """Every gate decision for `name`, oldest first (from registered-model tags)."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith("audit."))]


def earlier_decision(client: MlflowClient, name: str, version: str) -> Decision | None:
    """The audit trail's decision on `version`, if a concurrent register already gated it."""
    if "decision" not in client.get_model_version(name, version).tags:
        return None
    entry = next((e for e in audit_trail(client, name) if e["version"] == version), None)
    return None if entry is None else Decision(**{f.name: entry[f.name] for f in fields(Decision)})


def register(client: MlflowClient, info: ModelInfo, name: str, tags: dict[str, str]) -> str:
    """Create (if needed) the registered model and a new version; return the version number."""
    try:
        client.create_registered_model(name, description="Binary classifier on raw inputs; "
                                       "aliases: champion (serving), challenger (latest "
                                       "gated version).")
        log.info("created registered model %s", name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":  # it exists already: fine
            raise
    # Not mlflow.register_model: it tries to create the registered model again and prints
    # "already exists" even on a brand-new store. Same source, run and model links as it sets.
    # No await_creation_for: MLflow would log "Waiting up to 300 seconds" for a version that
    # open-source stores create READY; a registry that creates it pending is polled here.
    created = client.create_model_version(name, info.model_uri, run_id=info.run_id, tags=tags,
                                          model_id=info.model_id, await_creation_for=0)
    version, deadline = str(created.version), time.monotonic() + 300
    while created.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(1)
        created = client.get_model_version(name, version)
    # A tracking server links the logged model to the version itself; a database store doesn't.
    links = json.loads(client.get_logged_model(info.model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
    if (link := {"name": name, "version": int(version)}) not in links:
        client.set_logged_model_tags(info.model_id, {MODEL_VERSIONS_TAG: json.dumps(
            [*links, link])})
    log.info("%s v%s registered from run %s", name, version, info.run_id)
    return version


def undecided_version(client: MlflowClient, name: str, model_sha: str) -> ModelVersion | None:
    """The newest version of these weights that never got a gate decision, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None  # no such registered model yet
    pending = [v for v in versions
               if v.tags.get(Tag.MODEL_SHA) == model_sha and "decision" not in v.tags]
    return max(pending, key=lambda v: int(v.version), default=None)


def register_and_gate(cfg: RegisterConfig, model_dir: str, data_dir: str, meta: DatasetMeta,
                      test: Split, metrics: dict[str, Any], lineage: dict[str, str]
                      ) -> dict[str, Any]:
    """Log and register the model of the active run, gate it, move aliases; return the report."""
    client = MlflowClient()
    frame = serving.raw_inputs(meta, test.ids)
    run_id = mlflow.active_run().info.run_id
    pending = undecided_version(client, cfg.model_name, lineage[Tag.MODEL_SHA])
    if pending is not None:
        # A register killed after creating the version: finish that one, don't add another.
        version, uri = str(pending.version), str(pending.source)
        log.info("%s v%s of these weights has no gate decision yet: completing it",
                 cfg.model_name, version)
    else:
        info = log_raw_model(model_dir, Path(data_dir) / "meta.json", meta, metrics["threshold"],
                             frame.head(3))
        tags = {**{f"test_{k}": f"{metrics[k]:.6f}" for k in VERSION_METRICS}, **lineage,
                Tag.RUN_ID: run_id}
        uri, version = info.model_uri, register(client, info, cfg.model_name, tags)
    # The challenger's own score depends on no other registration: computed before locking.
    challenger = score(f"models:/{cfg.model_name}/{version}", frame, test.y,
                       meta.positive_class, cfg.metric)
    with team_lock(f"registry:{cfg.model_name}", tracking.tracking_uri()):
        # Everything that reads or moves the champion, the aliases or the trail happens here.
        decision = earlier_decision(client, cfg.model_name, version)
        if decision is None:
            decision = gate(client, cfg, challenger, frame, test.y, meta.positive_class)
            record(client, cfg.model_name, version, decision)
        else:  # a concurrent register of the same weights completed this version first
            log.info("%s v%s was gated meanwhile by another register", cfg.model_name, version)
        trail = audit_trail(client, cfg.model_name)
    tracking.log_tags({Tag.REGISTERED_VERSION: version,
                       Tag.GATE_DECISION: "promoted" if decision.promote else "rejected"})
    log.info("%s v%s: %s — %s", cfg.model_name, version,
             "champion" if decision.promote else "challenger only", decision.reason)
    report = {"model_name": cfg.model_name, "version": version, "model_uri": uri,
              "run_id": run_id, **asdict(decision),
              "champion_version": version if decision.promote else decision.champion_version,
              "audit": trail}
    tracking.log_dict(report, "registration.json")
    return report

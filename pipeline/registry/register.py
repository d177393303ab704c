"""Model registry: resolve the name, log the raw-input pyfunc, register a version (once per
weights, data and register params in a store; never under a name serving another input
contract), gate it (pipeline/registry/gate.py), move aliases, keep the audit trail (JSON tags,
and in words: pipeline/registry/audit.py).

The gate (read champion, score, decide, move aliases, append to the audit trail) runs under a
lock per registered model that every teammate's process sees (`locks.team_lock`), so concurrent
registrations are gated one after another and the audit trail stays one linear chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from pipeline.core import fingerprints, layout
from pipeline.core.config import RegisterConfig
from pipeline.core.locks import team_lock
from pipeline.core.metric_names import GATE_METRICS
from pipeline.core.services import mask
from pipeline.core.tags import Tag
from pipeline.data.dataset import META_FILE, DatasetMeta, Split
from pipeline.models.networks import CONFIG_FILE, WEIGHTS_FILE
from pipeline.registry import audit, examples, packaging, signature
from pipeline.registry.contract import AUTO, Contract, model_name
from pipeline.registry.gate import (
    CHALLENGER,
    CHAMPION,
    Decision,
    aliased,
    check_contract,
    download,
    gate,
    schema_contract,
    score,
)
from pipeline.tracking import metric_log, runs, store

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Package:
    """The files a registered version is made of: artifacts, the code it ships, its pins."""

    artifacts: dict[str, str]
    code: Path
    requirements: list[str]

    def sha256(self) -> str:
        """One hash of every byte the pyfunc serves from: the registry's identity for it."""
        digest = hashlib.sha256(json.dumps(self.requirements).encode())
        files = [(f"artifacts/{name}", Path(path)) for name, path in sorted(self.artifacts.items())]
        files += [(f"code/{f.relative_to(self.code).as_posix()}", f)
                  for f in sorted(self.code.rglob("*.py"))]
        for name, path in files:
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def package(model_dir: str | Path, meta_path: str | Path, meta: DatasetMeta, threshold: float,
            learned: set[str], tmp: Path) -> Package:
    """Write what a version ships (threshold, learned-from record, code) under `tmp`."""
    serving_json, record_path = tmp / "serving.json", tmp / fingerprints.LEARNED_FILE
    serving_json.write_text(json.dumps({"threshold": threshold, "classes": list(meta.classes)}))
    fingerprints.write_learned(record_path, learned)
    artifacts = {"weights": str(Path(model_dir) / WEIGHTS_FILE),
                 "model_config": str(Path(model_dir) / CONFIG_FILE),
                 "meta": str(meta_path), "serving": str(serving_json),
                 "learned_from": str(record_path)}
    model_type = json.loads(Path(artifacts["model_config"]).read_text())["model"]["type"]
    # Only the modules the pyfunc imports, pinned at the exact installed versions of what they
    # import (MLflow's inference is slow and guesses): it runs in any venv.
    return Package(artifacts, packaging.model_code(tmp / "code"),
                   packaging.model_requirements(model_type))


def log_raw_model(files: Package, meta: DatasetMeta, threshold: float,
                  example: pd.DataFrame) -> ModelInfo:
    """Log the pyfunc (models-from-code) from its files, with signature and contract."""
    # MLflow runs pyfunc_model.py in this process (and the gate loads the model back), so the
    # register stage runs serving.py and what it imports (models/inference.py, models/device.py,
    # core/heap.py) without importing them itself: dvc.yaml lists them as this stage's deps.
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(PACKAGE_DIR / "pyfunc_model.py"),
        code_paths=[str(files.code)], artifacts=files.artifacts,
        signature=signature.model_signature(meta), input_example=example,
        pip_requirements=files.requirements,
        metadata={"pipeline": signature.contract(meta, threshold)})


def contract_of(meta: DatasetMeta) -> Contract:
    """This model's input contract: what its signature accepts, and the labels it answers."""
    return schema_contract(meta.kind, meta.classes, signature.input_schema(meta))


def resolve(cfg: RegisterConfig, meta: DatasetMeta) -> RegisterConfig:
    """`cfg` with its model name resolved and logged; refuses a model of another task."""
    # Before anything is written; the gate checks again under the registry lock.
    name, why = model_name(cfg.model_name, meta.path, meta.positive_class)
    log.info("registered model name: %s (%s)", name, why)
    check_contract(MlflowClient(), name, contract_of(meta), auto_name(meta))
    return dataclasses.replace(cfg, model_name=name)


def auto_name(meta: DatasetMeta) -> str:
    """The name register.model_name: auto gives this data."""
    return model_name(AUTO, meta.path, meta.positive_class)[0]


def rule_text(cfg: RegisterConfig) -> str:
    """The register params a gate decided under, for the readable trail."""
    return (f"register.metric = {cfg.metric}, min_improvement = {cfg.min_improvement:g}, "
            f"min_gate_rows = {cfg.min_gate_rows}")


def record(client: MlflowClient, name: str, version: str, decision: Decision,
           rule: str, notes: audit.Notes) -> dict[str, Any]:
    """Tag the version with the decision, move aliases, append to and describe the trail."""
    tags = {Tag.DECISION: "promoted" if decision.promote else "rejected",
            Tag.REGISTER_PARAMS: rule, Tag.DECISION_REASON: decision.reason,
            Tag.GATE_METRIC: decision.metric,
            Tag.CHALLENGER_SCORE: "none" if decision.challenger_score is None
            else f"{decision.challenger_score:.6f}",
            Tag.COMPARED_ROWS: str(decision.compared_rows).lower(),
            Tag.EXCLUDED_ROWS: str(decision.excluded_rows).lower(),
            Tag.CHAMPION_OVERLAP: decision.overlap,
            Tag.CHAMPION_SCORE: "none" if decision.champion_score is None
            else f"{decision.champion_score:.6f}",
            Tag.COMPARED_TO_VERSION: decision.champion_version or "none"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    latest = aliased(client, name, CHALLENGER)
    # Gates run in lock order, not version order: the challenger alias only moves forward.
    if latest is None or int(latest.version) < int(version):
        client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    n = sum(1 for key in client.get_registered_model(name).tags if key.startswith(Tag.AUDIT))
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": version,
             "run_id": notes.run_id, "champion_before": decision.champion_version,
             "champion_after": version if decision.promote else decision.champion_version,
             **asdict(decision)}
    client.set_registered_model_tag(name, f"{Tag.AUDIT}{n + 1:05d}", json.dumps(entry))
    # The same decision for people: in the registry UI's version and model pages.
    client.update_model_version(name, version, audit.version_description(entry, notes))
    client.update_registered_model(name, audit.model_description(
        name, notes.contract, entry["champion_after"], audit_trail(client, name)))
    return entry


def audit_trail(client: MlflowClient, name: str) -> list[dict]:
    """Every gate decision for `name`, oldest first (from registered-model tags)."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(Tag.AUDIT))]


def earlier_decision(client: MlflowClient, name: str, version: str) -> Decision | None:
    """The audit trail's decision on `version`, if a concurrent register already gated it."""
    if Tag.DECISION not in client.get_model_version(name, version).tags:
        return None
    entry = next((e for e in audit_trail(client, name) if e["version"] == version), None)
    return None if entry is None else Decision(**{f.name: entry[f.name] for f in fields(Decision)
                                                  if f.name in entry})


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
    links = json.loads(client.get_logged_model(info.model_id).tags.get(Tag.MODEL_VERSIONS, "[]"))
    if (link := {"name": name, "version": int(version)}) not in links:
        client.set_logged_model_tags(info.model_id, {Tag.MODEL_VERSIONS: json.dumps(
            [*links, link])})
    log.info("%s v%s registered from run %s", name, version, info.run_id)
    return version


def same_version(client: MlflowClient, name: str, sha: str) -> ModelVersion | None:
    """The newest version made of exactly these files (pipeline.pyfunc_sha256), if any."""
    versions = client.search_model_versions(f"name = '{name}'")  # [] for a new name
    same = [v for v in versions if v.tags.get(Tag.PYFUNC_SHA) == sha]
    return max(same, key=lambda v: int(v.version), default=None)


def reused(earlier: Decision, version: str, champion: str | None) -> Decision:
    """What a rerun reports for a version gated before under the same register params."""
    state = "is the champion" if champion == version else f"is not (champion: v{champion})"
    return dataclasses.replace(earlier, promote=champion == version, reason=(
        f"reused v{version}: the same model files were registered and gated before under these "
        f"register params, and it {state}; that gate said: {earlier.reason}"))


def register_and_gate(cfg: RegisterConfig, model_dir: str, data_dir: str, meta: DatasetMeta,
                      test: Split, metrics: dict[str, Any], lineage: dict[str, str]
                      ) -> dict[str, Any]:
    """Register the active run's model once per store, gate it once per rule; report."""
    # A rerun reuses the version holding these exact files; it is gated again only under new
    # register params (and never against itself when it is the champion).
    client, name, rule = MlflowClient(), cfg.model_name, params_sha(cfg)
    frame, mine = examples.raw_inputs(meta, test.ids), contract_of(meta)
    run_id = mlflow.active_run().info.run_id
    notes = audit.Notes(name, mine.describe(), runs.data_source(meta), run_id,
                        rule_text(cfg))
    seen = fingerprints.read(data_dir)
    # Train and validation rows (augmented copies derive from train rows; folds pool both).
    learned = set(seen["train"]) | set(seen["val"])
    lock = f"registry:{name}"
    with tempfile.TemporaryDirectory() as tmp:
        files = package(model_dir, Path(data_dir) / META_FILE, meta, metrics["threshold"],
                        learned, Path(tmp))
        sha = files.sha256()
        # Look up and create under the lock: two clones registering at once make one version.
        with team_lock(lock, store.tracking_uri()):
            # Checked again under the lock: another task may have taken the name meanwhile.
            check_contract(client, name, mine, auto_name(meta), warn=False)  # said once
            existing = same_version(client, name, sha)
            if existing is None:
                info = log_raw_model(files, meta, metrics["threshold"], frame.head(3))
                # Every score a gate may compare, for the registry UI.
                tags = {**{f"test_{k}": f"{metrics[k]:.6f}" for k in GATE_METRICS},
                        **lineage, Tag.PYFUNC_SHA: sha, Tag.RUN_ID: run_id,
                        Tag.LEARNED_ROWS: str(len(learned)), Tag.CONTRACT: mine.to_tag(),
                        Tag.CONTRACT_SUMMARY: notes.contract, Tag.DATA_SOURCE: notes.data_source}
                uri, version = info.model_uri, register(client, info, name, tags)
            else:  # a rerun (forced, a fresh clone on the team's store), or a killed register
                uri, version = str(existing.source), str(existing.version)
                log.info("%s v%s holds exactly these model files: no new version", name, version)
        # The challenger's own answers depend on no other registration: computed unlocked.
        challenger = score(download(name, version, Path(tmp) / "challenger"), frame)
        with team_lock(lock, store.tracking_uri()):
            # Everything that reads or moves the champion, the aliases or the trail is here.
            earlier, champion = earlier_decision(client, name, version), aliased(client, name)
            holder = None if champion is None else str(champion.version)
            # Gated before under this rule, or the champion already: nothing to decide (the
            # champion against itself would only be "rejected" for no gain).
            done = earlier is not None and (holder == version or client.get_model_version(
                name, version).tags.get(Tag.REGISTER_PARAMS) == rule)
            if done:
                decision = reused(earlier, version, holder)
            else:
                decision = gate(client, cfg, challenger, learned, test, seen["test"], frame,
                                meta.positive_class, Path(tmp))
                entry = record(client, name, version, decision, rule, notes)
            trail, champion = audit_trail(client, name), aliased(client, name)
    outcome = "reused" if done else (
        "promoted" if decision.promote else "rejected")
    metric_log.log_tags({Tag.REGISTERED_MODEL: name, Tag.REGISTERED_VERSION: version,
                         Tag.GATE_DECISION: outcome})
    if not done:
        mlflow.log_text(audit.audit_markdown(entry, notes, trail), "audit.md")
    log.info("%s v%s: %s — %s", name, version,
             "champion" if decision.promote else "challenger only", decision.reason)
    report = {"model_name": name, "version": version, "model_uri": uri,
              "tracking_uri": mask(store.tracking_uri()), "run_id": run_id,
              "experiment_id": mlflow.active_run().info.experiment_id,
              "outcome": outcome, **asdict(decision),
              "champion_version": None if champion is None else str(champion.version),
              "audit": trail}
    metric_log.log_dict(report, layout.REGISTRATION)
    return report


def params_sha(cfg: RegisterConfig) -> str:
    """sha256 of the register section: a version is gated once per rule."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()

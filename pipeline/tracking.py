"""The one MLflow importer for runs: store setup, run lifecycle, batched logging, lineage tags."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.engine import Callback, FitResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
BATCH = 900  # below MLflow's 1000-entries-per-log_batch limit
TAG_PID, TAG_HOST = "pipeline.pid", "pipeline.host"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a local SQLite file at the repo root (no server needed)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure() -> MlflowClient:
    """Point MLflow at the configured store; call from entry points, never at import."""
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def artifact_root(uri: str) -> str | None:
    """For a SQLite store, keep artifacts in `mlartifacts/` beside the DB (never ./mlruns)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None  # a server or database store decides its own artifact location
    db_path = Path(unquote(uri[len("sqlite:///"):]))
    return (db_path.resolve().parent / "mlartifacts").as_uri()


def experiment_id(name: str) -> str:
    """Id of experiment `name`, created with a local artifact root when the store is SQLite."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(tracking_uri()))
    except mlflow.exceptions.MlflowException:
        # Another worker created it between our lookup and create.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_orphaned_runs(exp_id: str) -> list[str]:
    """Mark RUNNING runs whose process on this host is gone (SIGKILL, OOM) as KILLED."""
    client = MlflowClient()
    ended = []
    for run in client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(TAG_HOST) != platform.node() or TAG_PID not in tags:
            continue
        if int(tags[TAG_PID]) != os.getpid() and not process_alive(int(tags[TAG_PID])):
            if tags.get("trial_state") == "RUNNING":
                client.set_tag(run.info.run_id, "trial_state", "FAIL")  # as Optuna will see it
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, run_id: str | None = None,
              tags: dict[str, str] | None = None, parent_run_id: str | None = None,
              ) -> Iterator[mlflow.ActiveRun]:
    """Start or resume a run; an exception ends it FAILED, Ctrl-C KILLED, never RUNNING."""
    exp_id = experiment_id(experiment)
    end_orphaned_runs(exp_id)
    all_tags = {TAG_PID: str(os.getpid()), TAG_HOST: platform.node(), **(tags or {})}
    if parent_run_id is not None:
        all_tags["mlflow.parentRunId"] = parent_run_id
    active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                              run_name=run_name, tags=all_tags if run_id is None else None)
    if run_id is not None:
        mlflow.set_tags(all_tags)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log many params in few calls."""
    client, run_id = MlflowClient(), run_id or mlflow.active_run().info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100], synchronous=True)


def log_metric_rows(rows: list[dict[str, float]], step_key: str = "epoch",
                    run_id: str | None = None, prefix: str = "") -> None:
    """Log per-step metric rows with as few log_batch calls as possible."""
    client, run_id = MlflowClient(), run_id or mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"{prefix}{k}", float(v), now, int(row[step_key]))
               for row in rows for k, v in row.items() if k != step_key]
    for i in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + BATCH], synchronous=True)


class EpochLogger(Callback):
    """Buffers per-epoch metrics and flushes them to MLflow in batches (not one call per epoch)."""

    def __init__(self, run_id: str, flush_every: int = 10, prefix: str = "") -> None:
        self.run_id, self.flush_every, self.prefix = run_id, flush_every, prefix
        self.buffer: list[dict[str, float]] = []
        self.seconds = 0.0  # time spent logging, for the overhead benchmark

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.buffer.append(logs)
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def on_fit_end(self, result: FitResult) -> None:
        self.flush()

    def flush(self) -> None:
        """Send buffered rows now."""
        if self.buffer:
            tick = time.perf_counter()
            log_metric_rows(self.buffer, run_id=self.run_id, prefix=self.prefix)
            self.buffer = []
            self.seconds += time.perf_counter() - tick


def git_info() -> dict[str, str]:
    """Commit and dirty flag of the working tree ('unknown' outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return {"mlflow.source.git.commit": "unknown", "pipeline.git_dirty": "unknown"}
    return {"mlflow.source.git.commit": commit, "pipeline.git_dirty": str(dirty).lower()}


def content_md5(path: str | Path) -> str:
    """md5 over a file or a folder's sorted (relative path, bytes); stable across machines."""
    path = Path(path)
    digest = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        digest.update(hashlib.md5(file.read_bytes()).digest())
    return digest.hexdigest()


def dvc_hash(path: str | Path, lock: str | Path = "dvc.lock") -> str:
    """DVC's md5 of a stage output from dvc.lock, else our own content md5 (outside DVC)."""
    wanted = Path(path).as_posix().rstrip("/")
    lock = Path(lock)
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if out.get("path", "").rstrip("/") == wanted and "md5" in out:
                    return str(out["md5"])
    return content_md5(path)


def runtime_tags(device: str, threads: int) -> dict[str, str]:
    """Library versions, device and thread count that produced a run."""
    import torch

    return {"pipeline.torch": torch.__version__, "pipeline.device": device,
            "pipeline.threads": str(threads), "pipeline.python": platform.python_version(),
            "pipeline.mlflow": mlflow.__version__}


def log_dataset(features: Any, targets: Any, name: str, source: str, digest: str,
                context: str) -> None:
    """Record a dataset input on the active run with the DVC hash as its digest."""
    from mlflow.data.sources import LocalArtifactDatasetSource

    dataset = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest[:36],
                                     source=LocalArtifactDatasetSource(str(source)))
    mlflow.log_input(dataset, context=context)


def find_run(experiment: str, tag: str, value: str) -> str | None:
    """Most recent run in `experiment` whose tag `tag` equals `value`."""
    exp = MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs([exp.experiment_id], f"tags.`{tag}` = '{value}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None

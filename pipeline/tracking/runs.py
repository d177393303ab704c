"""The MLflow boundary for runs: store setup, tag names, run lifecycle, batched logging, lineage."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from pipeline.core.errors import StoreError
from pipeline.core.files import disk_full_error, is_disk_full
from pipeline.core.lineage import dvc_experiment_tags, file_sha256, pipeline_run_name
from pipeline.core.locks import lock_for
from pipeline.core.procs import invocation_id, owner_gone
from pipeline.core.services import check_database, check_server, is_http, mask
from pipeline.core.tags import Tag
from pipeline.data.dataset import DatasetMeta
from pipeline.tracking.sqlite_store import check_sqlite, sqlite_file
from pipeline.training.callbacks import Callback, FitResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a local SQLite file at the repo root (no server needed)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# What a broken store raises: MLflow's own errors, or the database driver's underneath them.
STORE_ERRORS = (MlflowException, SQLAlchemyError)


def store_error(err: Exception) -> StoreError:
    """One line naming the store and its complaint, instead of a driver traceback."""
    lines = str(getattr(err, "message", None) or err).splitlines() or [type(err).__name__]
    # SQLAlchemy may put its own remark first; the driver's complaint is `(module.Error) ...`.
    driver = [line for line in lines if re.match(r"\([\w.]+\) ", line)]
    return StoreError(f"MLFLOW_TRACKING_URI={mask(tracking_uri())}: tracking store failed: "
                      f"{(driver or lines)[0]}")


def configure(must_exist: bool = False) -> MlflowClient:
    """Point MLflow at the configured store and check it answers (a missing SQLite file is
    refused where `must_exist`: stages that continue a train run); call from entry points."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # noise in DVC logs
    uri = tracking_uri()
    db = sqlite_file(uri)
    if db is not None:
        check_sqlite(uri, db, must_exist)
    # Fail in seconds, not after MLflow's minutes of retries, on a dead or mistyped service.
    elif is_http(uri):
        check_server(uri)
    else:
        check_database(uri, "MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # A new SQLite store is created by its first client; two at once (`dvc queue start -j 2`
    # on a fresh clone) race in MLflow's schema migration.
    with lock_for(uri, "init") if db is not None else contextlib.nullcontext():
        try:
            client = MlflowClient()
            client.search_experiments(max_results=1)
        except STORE_ERRORS as err:
            raise store_error(err) from None
    return client


def artifact_root(uri: str) -> str | None:
    """For a SQLite store, keep artifacts in `mlartifacts/` beside the DB (never ./mlruns)."""
    db = sqlite_file(uri)
    # A server or database store decides its own artifact location.
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


def experiment_id(name: str) -> str:
    """Id of experiment `name`, created with a local artifact root when the store is SQLite."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    expected = artifact_root(tracking_uri())
    if found is not None and expected is not None and found.artifact_location != expected:
        # A SQLite store copied from another checkout still points at that checkout's
        # artifacts: new runs would write there. MLflow cannot move an experiment's root.
        raise StoreError(f"MLFLOW_TRACKING_URI={mask(tracking_uri())}: experiment {name!r} "
                         f"keeps its artifacts in {found.artifact_location}, not beside this store "
                         f"({expected}); the store was copied from elsewhere. Point "
                         "MLFLOW_TRACKING_URI at the original store, or move this mlflow.db "
                         "aside to start a fresh one")
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


def owner_tags() -> dict[str, str]:
    """Host and pid of this process, so a later process can tell if a RUNNING run is orphaned."""
    return {Tag.PID: str(os.getpid()), Tag.HOST: platform.node()}


def end_orphaned_runs(exp_id: str) -> list[str]:
    """Mark RUNNING runs whose process on this host is gone (SIGKILL, OOM) as KILLED."""
    client = MlflowClient()
    ended = []
    for run in client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if owner_gone(tags.get(Tag.HOST), tags.get(Tag.PID)):
            if tags.get(Tag.TRIAL_STATE) == "RUNNING":
                client.set_tag(run.info.run_id, Tag.TRIAL_STATE, "FAIL")  # as Optuna will see it
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[str]:
    """Start or resume a run and yield its id; an exception ends it FAILED, Ctrl-C KILLED."""
    all_tags = {**owner_tags(), **(tags or {})}
    try:
        exp_id = experiment_id(experiment)
        end_orphaned_runs(exp_id)
        # A resumed run keeps its name (MLflow would rename it to run_name).
        active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                                  run_name=run_name if run_id is None else None,
                                  tags=all_tags if run_id is None else None)
        if run_id is not None:
            mlflow.set_tags(all_tags)
    except STORE_ERRORS as err:
        with contextlib.suppress(*STORE_ERRORS):
            mlflow.end_run("FAILED")  # a run created before its tags failed
        raise store_error(err) from None
    try:
        yield active.info.run_id
    except BaseException as err:
        # Ending the run may fail too (a full disk, a broken store); then the next run's
        # end_orphaned_runs marks it KILLED.
        with contextlib.suppress(*STORE_ERRORS, OSError):
            mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, STORE_ERRORS):
            raise store_error(err) from None
        if is_disk_full(err):  # MLflow's artifact copies (ours name their own file)
            raise disk_full_error(getattr(err, "filename", None) or active.info.artifact_uri,
                                  err) from None
        raise
    mlflow.end_run("FINISHED")


def invocation() -> str:
    """The `dvc repro` / `dvc exp run` (or hand-run process) running this stage, by experiment."""
    # The experiment's name too: one process can run several experiments' stages (tests).
    exp = dvc_experiment_tags().get(Tag.DVC_EXP)
    return f"{exp}@{invocation_id()}" if exp else invocation_id()


def data_source(meta: DatasetMeta) -> str:
    """What a run learned from, for its tag: a built-in set's name, else the user's data.path."""
    # imagefolder and csv name a layout, not the data: their path says which data it is.
    return meta.path if meta.source in ("imagefolder", "csv") else meta.source


def run_tags(stage: str) -> dict[str, str]:
    """Tags of a new pipeline run: the stage that opened it, its invocation, its experiment."""
    return {Tag.STAGE: stage, Tag.INVOCATION: invocation(), **dvc_experiment_tags()}


@contextlib.contextmanager
def model_run(experiment: str, stage: str, weights: str | Path) -> Iterator[str]:
    """This invocation's run of these weights, else a new one linked to their train run."""
    # History is append-only: a later experiment never writes into an earlier one's run.
    sha = file_sha256(weights)
    mine = find_run(experiment, {Tag.INVOCATION: invocation(), Tag.MODEL_SHA: sha})
    trainer = None if mine else find_run(experiment, {Tag.MODEL_SHA: sha, Tag.STAGE: "train"})
    tags = {**run_tags(stage), Tag.MODEL_SHA: sha, Tag.TRAINED_BY: trainer or "unknown"}
    if trainer:  # the data these weights learned from, as their train run names it
        source = MlflowClient().get_run(trainer).data.tags.get(Tag.DATA_SOURCE)
        tags |= {Tag.DATA_SOURCE: source} if source else {}
    with start_run(experiment, run_name=pipeline_run_name(), run_id=mine,
                   tags=None if mine else tags) as run_id:
        yield run_id


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log many params in one call (MlflowClient.log_batch splits at the server's limits)."""
    run_id = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def log_stage_params(params: dict[str, Any]) -> None:
    """Params of a stage adding to a shared run (evaluate.*, register.*); held keys stay."""
    # MLflow params are immutable: only a stage run twice in one invocation (in-process) can
    # meet a held key with another value, and is warned.
    run_id = mlflow.active_run().info.run_id
    held = MlflowClient().get_run(run_id).data.params
    for key in sorted(k for k, v in params.items() if k in held and held[k] != str(v)[:6000]):
        warnings.warn(f"run {run_id} already records {key}={held[key]!r}; not changed to "
                      f"{params[key]!r}", stacklevel=2)
    log_params({k: v for k, v in params.items() if k not in held})


def log_metrics(metrics: dict[str, float], run_id: str | None = None, step: int = 0) -> None:
    """Log scalar metrics (ints and floats; anything else is skipped) in one call."""
    log_batch(run_id or mlflow.active_run().info.run_id, {step: metrics}, {})


def log_batch(run_id: str, metrics_by_step: dict[int, dict[str, float]],
              tags: dict[str, str]) -> None:
    """Log scalar metrics at several steps (ints and floats; anything else is skipped) and
    tags in one call: against a server each call is a round trip."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], metrics=[
        Metric(k, float(v), now, step) for step, metrics in metrics_by_step.items()
        for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)])


class Background:
    """Logging calls run one after another on a thread of their own, off the training thread
    (against a server each is a round trip); `close` returns when all are stored, or raises
    the first failure."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-log")
        self.pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue fn(*args, **kwargs)."""
        self.pending.append(self.pool.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Block until everything queued is done (raise the first failure); stop the thread."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown()


class EpochLogger(Callback):
    """Sends per-epoch metrics in batches from a background thread; waits for them when the
    fit ends, so a store failure still fails the stage."""

    def __init__(self, run_id: str, flush_every: int = 10) -> None:
        self.run_id, self.flush_every = run_id, flush_every
        self.buffer: list[dict[str, float]] = []
        self.background = Background()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.buffer.append(logs)
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def on_fit_end(self, result: FitResult) -> None:
        self.flush()
        self.wait()

    def flush(self) -> None:
        """Queue buffered rows now (also called when a trial is pruned)."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"]))
                   for row in self.buffer for k, v in row.items() if k != "epoch"]
        if metrics:
            self.background.submit(MlflowClient().log_batch, self.run_id, metrics=metrics)
        self.buffer = []

    def wait(self) -> None:
        """Block until every queued batch is stored; a store failure raises here."""
        self.background.close()


def log_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    """Set tags on a run (the active one by default) in one call."""
    log_batch(run_id or mlflow.active_run().info.run_id, {}, tags)


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    """Upload files to the active run."""
    for path in paths:
        mlflow.log_artifact(str(path), folder)


def log_dict(obj: Any, name: str) -> None:
    """Store a JSON document as an artifact of the active run."""
    mlflow.log_dict(obj, name)


def find_run(experiment: str, tags: dict[str, str]) -> str | None:
    """Most recent run in `experiment` whose tags have all these values."""
    exp = MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = MlflowClient().search_runs([exp.experiment_id], query,
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None

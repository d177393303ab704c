"""Logging into a run: params, metrics, tags and files in as few calls as the store allows, and
per-epoch metrics sent in batches from a background thread while the network trains."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.training.callbacks import Callback, EpochProgress, FitResult

# MLflow's longest param value; a longer one is cut, not refused.
PARAM_CHARS = 6000


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log many params in one call (MlflowClient.log_batch splits at the server's limits)."""
    run_id = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_batch(run_id, params=[Param(k, str(v)[:PARAM_CHARS])
                                             for k, v in params.items()])


def log_stage_params(params: dict[str, Any]) -> None:
    """Params of a stage adding to a shared run (evaluate.*, register.*); held keys stay."""
    # MLflow params are immutable: only a stage run twice in one invocation (in-process) can
    # meet a held key with another value, and is warned.
    run_id = mlflow.active_run().info.run_id
    held = MlflowClient().get_run(run_id).data.params
    for key in sorted(k for k, v in params.items()
                      if k in held and held[k] != str(v)[:PARAM_CHARS]):
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


def log_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    """Set tags on a run (the active one by default) in one call."""
    log_batch(run_id or mlflow.active_run().info.run_id, {}, tags)


def log_artifacts(paths: list[Path], folder: str | None = None,
                  run_id: str | None = None) -> None:
    """Upload files to a run (the active one by default)."""
    run_id = run_id or mlflow.active_run().info.run_id
    for path in paths:
        MlflowClient().log_artifact(run_id, str(path), folder)


def log_dict(obj: Any, name: str, run_id: str | None = None) -> None:
    """Store a JSON document as an artifact of a run (the active one by default)."""
    MlflowClient().log_dict(run_id or mlflow.active_run().info.run_id, obj, name)


class Background:
    """Logging calls run off the training thread, one after another on a thread of their own
    (or at once on `workers` threads; against a server each is a round trip); `close` returns
    when all are stored, or raises the first failure."""

    def __init__(self, workers: int = 1) -> None:
        # One thread keeps calls in order; more send independent calls at once.
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mlflow-log")
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
    """Sends per-epoch metrics in batches from a background thread; the fit's end queues the
    last batch, and its owner calls `wait` (a store failure still fails the stage) once it has
    queued its own requests, so the waits overlap."""

    def __init__(self, run_id: str, flush_every: int = 10, prefix: str = "") -> None:
        self.run_id, self.flush_every, self.prefix = run_id, flush_every, prefix
        self.buffer: list[dict[str, float]] = []
        self.background = Background()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.buffer.append(logs)
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def on_fit_end(self, result: FitResult) -> None:
        self.flush()

    def flush(self) -> None:
        """Queue buffered rows now (also called when a trial is pruned)."""
        now = int(time.time() * 1000)
        metrics = [Metric(self.prefix + k, float(v), now, int(row["epoch"]))
                   for row in self.buffer for k, v in row.items() if k != "epoch"]
        if metrics:
            self.background.submit(MlflowClient().log_batch, self.run_id, metrics=metrics)
        self.buffer = []

    def wait(self) -> None:
        """Block until every queued batch is stored; a store failure raises here."""
        self.background.close()


class FitLogs:
    """The train stage's callbacks per fit (see fit_final): per-epoch metrics into the run (a
    fold's under `fold<i>/`, which the MLflow UI groups) and a progress bar; `wait` returns
    once every fit's metrics are stored."""

    def __init__(self, run_id: str, monitor: str) -> None:
        self.run_id, self.monitor = run_id, monitor
        self.loggers: list[EpochLogger] = []

    def __call__(self, fit: str) -> list[Callback]:
        self.loggers.append(EpochLogger(self.run_id, prefix=fit))
        return [self.loggers[-1], EpochProgress(f"train {fit}".rstrip("/ "), self.monitor)]

    def wait(self) -> None:
        """Block until every fit's batches are stored; a store failure raises here."""
        for logger in self.loggers:
            logger.wait()

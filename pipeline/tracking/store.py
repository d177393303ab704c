"""Where runs are stored: the tracking URI, checking the store answers (one-line errors when it
does not), and the experiment runs go into."""

from __future__ import annotations

import contextlib
import os
import re

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from pipeline.core.errors import StoreError
from pipeline.core.locks import lock_for
from pipeline.core.services import check_database, check_server, is_http, mask
from pipeline.tracking.sqlite_store import check_sqlite, sqlite_file

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
    # A server's run and experiment links, printed as each run ends: a request per run (~15 ms)
    # and lines our stages already log, with the view that shows the test metrics.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = tracking_uri()
    db = sqlite_file(uri)
    if db is not None:
        check_sqlite(uri, db, must_exist)
    # Fail in seconds, not after MLflow's minutes of retries, on a dead or mistyped service.
    elif is_http(uri):
        check_server(uri)
    else:
        check_database(uri, "MLFLOW_TRACKING_URI")
    # MLflow reads MLFLOW_TRACKING_URI itself; setting the same URI again would only reset its
    # tracing (~40 ms of imports a pipeline never uses).
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    if is_http(uri):  # check_server asked it for an experiment, as the check below would
        return MlflowClient()
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
        return client.create_experiment(name, artifact_location=expected)
    except MlflowException:
        # Another worker created it between our lookup and create.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id

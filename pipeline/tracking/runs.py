"""A pipeline run's life: finding runs by their tags, opening and ending one (and the runs a
killed process left open), and the tags that say which stage and invocation made it."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

from pipeline.core.files import disk_full_error, is_disk_full
from pipeline.core.lineage import dvc_experiment_tags, file_sha256, pipeline_run_name
from pipeline.core.procs import invocation_id, owner_gone
from pipeline.core.tags import Tag
from pipeline.data.dataset import DatasetMeta
from pipeline.tracking import metric_log
from pipeline.tracking.metric_log import Background
from pipeline.tracking.store import STORE_ERRORS, experiment_id, store_error

# The most runs one search request returns (MLflow's default page); more come page by page.
PAGE = 1000


def quoted(value: str) -> str:
    """`value` as a string literal of MLflow's search grammar (which has no escapes)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search runs for a tag value holding both quote characters: "
                     f"{value!r}")


def find_runs(exp_id: str, tags: dict[str, str], status: str | None = None,
              limit: int | None = None) -> list[Run]:
    """Runs of experiment `exp_id` whose tags have all these values (and this status), newest
    first; every one, or the newest `limit`."""
    clauses = [f"tags.`{key}` = {quoted(value)}" for key, value in tags.items()]
    clauses += [f"attributes.status = {quoted(status)}"] if status else []
    client, found, token = MlflowClient(), [], None
    while limit is None or len(found) < limit:
        page = client.search_runs([exp_id], " and ".join(clauses),
                                  max_results=min(PAGE, limit or PAGE), page_token=token,
                                  order_by=["attributes.start_time DESC"])
        found += page
        token = page.token
        if not token:
            break
    return found[:limit]


def find_run(exp_id: str, tags: dict[str, str]) -> str | None:
    """Id of the newest run of experiment `exp_id` whose tags have all these values."""
    found = find_runs(exp_id, tags, limit=1)
    return found[0].info.run_id if found else None


def owner_tags() -> dict[str, str]:
    """Host and pid of this process, so a later process can tell if a RUNNING run is orphaned."""
    return {Tag.PID: str(os.getpid()), Tag.HOST: platform.node()}


def end_orphaned_runs(exp_id: str) -> list[str]:
    """Mark RUNNING runs whose process on this host is gone (SIGKILL, OOM) as KILLED."""
    client = MlflowClient()
    ended = []
    for run in find_runs(exp_id, {}, status="RUNNING"):
        tags = run.data.tags
        if owner_gone(tags.get(Tag.HOST), tags.get(Tag.PID)):
            if tags.get(Tag.TRIAL_STATE) == "RUNNING":
                client.set_tag(run.info.run_id, Tag.TRIAL_STATE, "FAIL")  # as Optuna will see it
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


def context_tags() -> dict[str, str]:
    """The user and source tags MLflow's fluent `start_run` adds (git's come from lineage)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = "unknown"
    return {MLFLOW_USER: user, MLFLOW_SOURCE_NAME: sys.argv[0], MLFLOW_SOURCE_TYPE: "LOCAL"}


@dataclasses.dataclass(frozen=True)
class RunRef:
    """A run by its experiment's id and its own."""

    experiment_id: str
    run_id: str


@contextlib.contextmanager
def start_run(exp_id: str, run_name: str | None = None, run_id: str | None = None,
              tags: dict[str, str] | None = None, fluent: bool = True) -> Iterator[str]:
    """Start or resume a run of experiment `exp_id` and yield its id; an exception ends it
    FAILED, Ctrl-C KILLED. `fluent=False` opens a new run and leaves MLflow's active run
    alone (the code inside passes the id): no context providers, ~30 ms less per run against
    a server."""
    if run_id is not None and not fluent:
        raise ValueError("only a new run opens without MLflow's active run")
    all_tags, resumed, client = {**owner_tags(), **(tags or {})}, run_id, MlflowClient()

    def end(status: str) -> None:
        if fluent:
            mlflow.end_run(status)
        elif run_id is not None:
            client.set_terminated(run_id, status)

    try:
        if fluent:
            # A resumed run keeps its name (MLflow would rename it to run_name).
            run_id = mlflow.start_run(run_id=resumed, experiment_id=None if resumed else exp_id,
                                      run_name=None if resumed else run_name,
                                      tags=None if resumed else all_tags).info.run_id
        else:
            run_id = client.create_run(exp_id, run_name=run_name,
                                       tags={**context_tags(), **all_tags}).info.run_id
        if resumed is not None:
            metric_log.log_tags(all_tags, run_id)
    except STORE_ERRORS as err:
        with contextlib.suppress(*STORE_ERRORS):
            end("FAILED")  # a run created before its tags failed
        raise store_error(err) from None

    # Runs a killed process left RUNNING are ended while this one works: nothing here reads them.
    repair = Background()
    repair.submit(end_orphaned_runs, exp_id)
    try:
        yield run_id
        repair.close()
    except BaseException as err:
        # Ending the run may fail too (a full disk, a broken store); then the next run's
        # end_orphaned_runs marks it KILLED.
        with contextlib.suppress(*STORE_ERRORS, OSError):
            end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, STORE_ERRORS):
            raise store_error(err) from None
        if is_disk_full(err):  # MLflow's artifact copies (ours name their own file)
            where = getattr(err, "filename", None) or f"run {run_id}'s artifacts"
            raise disk_full_error(where, err) from None
        raise
    end("FINISHED")


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
    sha, exp_id = file_sha256(weights), experiment_id(experiment)
    mine = find_run(exp_id, {Tag.INVOCATION: invocation(), Tag.MODEL_SHA: sha})
    trainer = None if mine else find_run(exp_id, {Tag.MODEL_SHA: sha, Tag.STAGE: "train"})
    tags = {**run_tags(stage), Tag.MODEL_SHA: sha, Tag.TRAINED_BY: trainer or "unknown"}
    if trainer:  # the data these weights learned from, as their train run names it
        source = MlflowClient().get_run(trainer).data.tags.get(Tag.DATA_SOURCE)
        tags |= {Tag.DATA_SOURCE: source} if source else {}
    with start_run(exp_id, run_name=pipeline_run_name(), run_id=mine,
                   tags=None if mine else tags) as run_id:
        yield run_id

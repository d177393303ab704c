"""A pipeline run's life: finding runs by their tags, opening and ending one (and the runs a
killed process left open), and the tags that say which stage and invocation made it."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.core.files import disk_full_error, is_disk_full
from pipeline.core.lineage import dvc_experiment_tags, file_sha256, pipeline_run_name
from pipeline.core.procs import invocation_id, owner_gone
from pipeline.core.tags import Tag
from pipeline.data.dataset import DatasetMeta
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


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[str]:
    """Start or resume a run and yield its id; an exception ends it FAILED, Ctrl-C KILLED."""
    all_tags = {**owner_tags(), **(tags or {})}
    try:
        exp_id = experiment_id(experiment)
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
    # Runs a killed process left RUNNING are ended while this one works: nothing here reads them.
    repair = Background()
    repair.submit(end_orphaned_runs, exp_id)
    try:
        yield active.info.run_id
        repair.close()
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
    sha, exp_id = file_sha256(weights), experiment_id(experiment)
    mine = find_run(exp_id, {Tag.INVOCATION: invocation(), Tag.MODEL_SHA: sha})
    trainer = None if mine else find_run(exp_id, {Tag.MODEL_SHA: sha, Tag.STAGE: "train"})
    tags = {**run_tags(stage), Tag.MODEL_SHA: sha, Tag.TRAINED_BY: trainer or "unknown"}
    if trainer:  # the data these weights learned from, as their train run names it
        source = MlflowClient().get_run(trainer).data.tags.get(Tag.DATA_SOURCE)
        tags |= {Tag.DATA_SOURCE: source} if source else {}
    with start_run(experiment, run_name=pipeline_run_name(), run_id=mine,
                   tags=None if mine else tags) as run_id:
        yield run_id

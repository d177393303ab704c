"""MLflow runs of an Optuna study: its one parent run, and a child run per trial whose status
mirrors the trial's state."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from pipeline.core.config import Params
from pipeline.core.interrupts import Interrupted
from pipeline.core.locks import lock_for
from pipeline.core.services import mask
from pipeline.core.tags import Tag
from pipeline.tracking import metric_log, runs, store


def parent_run_id(params: Params, name: str, storage: str) -> str:
    """The study's one parent run: found by its tag, or created under a lock all hosts see."""
    with lock_for(storage, f"parent-{name}"):
        exp_id = store.experiment_id(params.mlflow.experiment)
        found = runs.find_run(exp_id, {Tag.STUDY_PARENT: name})
        return found or MlflowClient().create_run(
            exp_id, run_name=f"tune {name}",
            tags={Tag.STUDY_PARENT: name, Tag.STUDY: name, Tag.STORAGE: mask(storage),
                  Tag.STAGE: "tune"}).info.run_id


@dataclass
class TrialRun:
    """A nested run for one Optuna trial; set `state` (COMPLETE or PRUNED) before leaving."""

    run_id: str
    state: str = "RUNNING"
    pruned_at: int | None = None  # step of the pruner's decision
    unit: str = "epoch"  # what the steps count: epochs, or folds when the trial cross-validates
    metrics: dict[str, float] = field(default_factory=dict)  # sent with the closing request


# Optuna trial state → MLflow run status.
_TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@contextlib.contextmanager
def trial_run(experiment_id: str, parent_run_id: str, study: str, number: int,
              params: dict[str, Any], data_source: str) -> Iterator[TrialRun]:
    """Child run of the study's parent run; its status mirrors the trial's final state."""
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=f"trial-{number}", tags={
        Tag.PARENT_RUN: parent_run_id, **runs.owner_tags(), Tag.STUDY: study,
        Tag.TRIAL_NUMBER: str(number), Tag.TRIAL_STATE: "RUNNING", Tag.STAGE: "tune",
        Tag.DATA_SOURCE: data_source})
    trial = TrialRun(run.info.run_id)
    metric_log.log_params(params, run_id=trial.run_id)
    tick = time.perf_counter()
    status = None
    try:
        yield trial
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"  # like a killed worker's trial: stopped, not broken
        raise
    finally:
        if status or trial.state not in _TRIAL_STATUS:
            trial.state = "FAIL"  # left by an exception
        tags = {Tag.TRIAL_STATE: trial.state}
        if trial.state == "PRUNED" and trial.pruned_at is not None:
            # KILLED shows red in the UI: the name and tag columns say it was the pruner,
            # after how many epochs or folds (`pruned@fold2`).
            tags |= {Tag.PRUNED_AT: str(trial.pruned_at), Tag.PRUNED_STEP: trial.unit,
                     Tag.RUN_NAME: f"trial-{number} pruned@{trial.unit}{trial.pruned_at}"}
        # Two requests per closing trial (short pruned trials are many, the server is shared).
        metric_log.log_batch(trial.run_id, {0: {
            **trial.metrics, "duration_seconds": time.perf_counter() - tick}}, tags)
        client.set_terminated(trial.run_id, status or _TRIAL_STATUS[trial.state])


def end_trial_runs(experiment_id: str, study: str, numbers: list[int]) -> None:
    """Mark the child runs of trials that Optuna failed (their worker died anywhere) KILLED."""
    if not numbers:
        return
    client = MlflowClient()
    wanted = {str(n) for n in numbers}
    # Not only RUNNING ones: a worker killed between closing its run and telling Optuna
    # leaves a FINISHED run of a trial that Optuna fails and reruns.
    for run in runs.find_runs(experiment_id, {Tag.STUDY: study}):
        tags = run.data.tags
        if tags.get(Tag.TRIAL_NUMBER) not in wanted or tags.get(Tag.TRIAL_STATE) == "FAIL":
            continue
        client.set_tag(run.info.run_id, Tag.TRIAL_STATE, "FAIL")
        client.set_terminated(run.info.run_id, "KILLED")


class DeadTrialRuns:
    """Ends the child runs of failed trials, each once, whoever failed them: this worker,
    another host, or Optuna's own stale-trial check at the start of a trial."""

    def __init__(self, experiment_id: str, study: str) -> None:
        self.experiment_id, self.study = experiment_id, study
        self.done: set[int] = set()

    def sweep(self, trials: list[FrozenTrial]) -> None:
        """End the runs of FAIL trials not swept before (one search request if any)."""
        new = [t.number for t in trials if t.state == TrialState.FAIL and t.number not in self.done]
        end_trial_runs(self.experiment_id, self.study, new)
        self.done.update(new)

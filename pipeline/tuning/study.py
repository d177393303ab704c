"""Optuna study identity, sampler and pruner; storage (journal file or database), the
trial-count lock and the repair of trials that died or were interrupted.

Several hosts can share one study on PostgreSQL: the "count, then start a trial" lock is an
advisory lock in that database, and a worker that dies anywhere stops beating its heartbeat,
so any other worker fails its trial and re-queues the same params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from pipeline.core.config import ModelConfig, Params, SearchParam, TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.core.locks import Lock, lock_for
from pipeline.core.procs import owner_gone
from pipeline.core.services import check_database
from pipeline.core.typed import field_type
from pipeline.tuning.journal import open_journal

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "optuna.journal"
# Trials that count toward tune.n_trials; failed ones are redrawn instead.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial killed on another host is retried with its params at most this many times.
MAX_RETRY = 3


def heartbeat_seconds() -> int:
    """PIPELINE_HEARTBEAT_SECONDS (default 10): a dead worker's trial fails after 3 missed beats."""
    value = os.environ.get("PIPELINE_HEARTBEAT_SECONDS", "10")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"PIPELINE_HEARTBEAT_SECONDS = {value!r}: must be a whole number >= 1")
    return int(value)


def storage_url() -> str:
    """OPTUNA_STORAGE (a database URL or a journal file path), else the local journal file."""
    return os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE


def is_database(url: str) -> bool:
    """True for SQLAlchemy URLs (postgresql://, mysql://, sqlite://), False for journal files."""
    return "://" in url and not url.startswith("journal://")


def make_storage(url: str, n_workers: int = 1) -> optuna.storages.BaseStorage:
    """Journal file by default (safe for parallel local workers); RDB with heartbeats for URLs."""
    if is_database(url):
        if url.startswith("sqlite") and n_workers > 1:
            raise ConfigError(f"tune.n_workers = {n_workers}: SQLite ({url}) is not safe for "
                              "parallel workers; use the default journal file or PostgreSQL")
        check_database(url, "OPTUNA_STORAGE")  # seconds, not the driver's minutes, when down
        beat = heartbeat_seconds()
        # A worker on any host that stops beating has its trial failed by the others, and the
        # callback re-queues its params, so whichever host asks next reruns exactly that trial.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental"
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=beat, grace_period=3 * beat,
                heartbeat_stale_trial_callback=requeue)
    return open_journal(url.removeprefix("journal://"))


def ask_lock(storage: str, study_name: str) -> Lock:
    """Serialises 'count trials, then start one' between workers so none overshoots: in the
    database itself for PostgreSQL (all hosts), beside the file for SQLite and journals."""
    return lock_for(storage, f"optuna-{study_name}")


def mark_owner(trial: optuna.Trial) -> None:
    """Record which process runs the trial, so a later process can tell if it died."""
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", platform.node())


def fail_dead_trials(study: optuna.Study, storage: str) -> list[int]:
    """Fail RUNNING trials whose worker is gone; return their numbers.

    On this host a dead pid is seen at once. In a database, heartbeats catch workers on any
    host (after the grace period) and re-queue their params. A journal's dead trials are not
    re-queued: the sampler is seeded from the study's progress, so the next trial draws the
    dead one's params again -- all of them, even when it died between two suggestions.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    failed = []
    for trial in running:
        # A trial is created and marked under the lock this caller holds: one without an
        # owner lost it when its creator died (or was interrupted) in between.
        if "pid" not in trial.user_attrs or owner_gone(trial.user_attrs.get("host"),
                                                        trial.user_attrs["pid"]):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(trial.number)
            if is_database(storage):
                retry(study, trial)
    if is_database(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # public API; runs the retry callback
        now = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        failed += [t.number for t in running
                   if t.number not in failed and now[t.number] == TrialState.FAIL]
    if failed:
        log.warning("failed trials %s left RUNNING by a dead worker; their params are rerun",
                    sorted(failed))
    return sorted(failed)


def fail_own_trials(study: optuna.Study, storage: str) -> list[int]:
    """Fail this process's RUNNING trials (after Ctrl-C), re-queued in a database like dead ones."""
    mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("pid") == os.getpid()
            and t.user_attrs.get("host") == platform.node()]
    for trial in mine:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if is_database(storage):
            retry(study, trial)
    return [t.number for t in mine]


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Re-queue a dead trial's params the way heartbeat failures are."""
    requeue(study, study.get_trials(deepcopy=False)[trial.number])


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's RetryHeartbeatStaleTrialCallback, minus the failed trial's system attributes.

    Optuna copies them all into the retry, the pruner's rung scores included: the retry then
    started at a later rung, judged against its own ghost, unlike the uninterrupted trial.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": history[0], "retry_history": history}))


# Objective values this close are one tie (a fold mean of equal scores may differ in its
# last bits by summation order).
TIE = 1e-9
# The trial's user attribute holding its validation loss at the best epoch (mean over folds).
LOSS_ATTR = "val_loss"


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best complete trial; among those tied on the objective (a ranking metric that
    saturates: ROC AUC 1.0 on every fold), the one with the lowest validation loss, which
    still tells a confident model from a lucky one (then the earliest). ValueError if none."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None]
    if not done:
        raise ValueError("no trial has completed")
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    top = max(sign * float(t.value) for t in done)  # type: ignore[arg-type]
    tied = [t for t in done if sign * float(t.value) >= top - TIE]  # type: ignore[arg-type]
    return min(tied, key=lambda t: (float(t.user_attrs.get(LOSS_ATTR, float("inf"))),
                                    t.number))


def count(study: optuna.Study | list[FrozenTrial]) -> dict[str, int]:
    """Trials per state name (of a study, or of its trials already fetched)."""
    trials = study if isinstance(study, list) else study.get_trials(deepcopy=False)
    out: dict[str, int] = {}
    for trial in trials:
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


def study_name(params: Params, data_hashes: dict[str, str]) -> str:
    """Name derived from everything a trial reads, so a rerun resumes the same study."""
    tuned = set(params.tune.search_space)
    # Untuned train/model values; the tuned ones are never read (the sampler supplies them).
    fixed = {f"{section}.{f.name}": getattr(getattr(params, section), f.name)
             for section in ("train", "model")
             for f in dataclasses.fields(getattr(params, section))
             if f"{section}.{f.name}" not in tuned}
    key = {"data": data_hashes, "fixed": fixed, "seed": params.seed,
           "space": {k: dataclasses.asdict(v) for k, v in params.tune.search_space.items()},
           "metric": params.tune.metric, "pruner": params.tune.pruner,
           "augment": (dataclasses.asdict(params.augment) if fixed.get("train.online_augment")
                       else None)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"{params.mlflow.experiment}-{digest[:12]}"


# Successive halving and Hyperband judge a trial only at rung steps MIN_RESOURCE * FACTOR**k.
MIN_RESOURCE, FACTOR = 2, 3


def make_pruner(name: str, epochs: int, folds: int = 0) -> optuna.pruners.BasePruner:
    """Pruner from tune.pruner over epochs, or over folds when trials cross-validate (each
    fold is a step); warm-up avoids judging trials on their noisy first epochs."""
    steps, first = (folds, 1) if folds else (epochs, MIN_RESOURCE)
    if name == "median":
        warmup = 1 if folds else min(4, epochs - 1)
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=warmup)
    if name == "successive_halving":
        return SuccessiveHalving(min_resource=first, reduction_factor=FACTOR)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=steps,
                                              reduction_factor=FACTOR)
    return optuna.pruners.NopPruner()


class SuccessiveHalving(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's successive halving, judging a trial only against trials that did not fail.

    A trial killed or interrupted keeps the rung scores it reached, and Optuna's pruner counts
    them: the rerun of its params raced its own ghost, so a resumed study pruned differently
    from an uninterrupted one. (Hyperband cannot be helped so: it assigns brackets by trial
    number, and a rerun has a new number.)
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Optuna's decision, over the study without its FAIL trials."""
        return super().prune(WithoutFailed(study), trial)  # type: ignore[arg-type]


class WithoutFailed:
    """A study as a pruner reads it, its FAIL trials left out; all else is the study's own."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        """The study's trials (of `states`) that did not fail."""
        return [t for t in self.study.get_trials(deepcopy=deepcopy, states=states)
                if t.state != TrialState.FAIL]


def report_epochs(name: str, epochs: int) -> set[int] | None:
    """The epochs whose validation score the pruner reads (None: every epoch).

    Each report is a storage write and each prune check a read: one database round trip per
    epoch and trial on a shared server. Successive halving and Hyperband (whose brackets share
    the rungs MIN_RESOURCE * FACTOR**k) decide only at rung steps, so reporting just those gives
    the same decisions; the median pruner reads every step; no pruner reads none (per-epoch
    curves are in each trial's MLflow run).
    """
    if name == "median":
        return None
    if name == "none":
        return set()
    rungs, step = set(), MIN_RESOURCE
    while step <= epochs:
        rungs.add(step)
        step *= FACTOR
    return rungs


def make_sampler(seed: int, worker: int, finished: int) -> optuna.samplers.TPESampler:
    """TPE seeded from the study's progress, not from process start, so a resumed study
    proposes what an uninterrupted one would have (its history is the same)."""
    # Workers get their own streams so parallel workers do not propose identical points.
    state = np.random.SeedSequence([seed, worker, finished]).generate_state(1)[0]
    return optuna.samplers.TPESampler(seed=int(state), n_startup_trials=5)


def suggest(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Sample every key of the search space for one trial (ints for int fields)."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.choices is not None:
            values[key] = trial.suggest_categorical(key, list(spec.choices))
            continue
        assert spec.low is not None and spec.high is not None
        section, _, name = key.partition(".")
        if field_type(TrainConfig if section == "train" else ModelConfig, name) is int:
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
        else:
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    return values

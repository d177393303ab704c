"""Optuna study storage: journal file or database, the trial-count lock, dead-trial repair."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import warnings
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from pipeline.errors import ConfigError
from pipeline.procs import owner_gone

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "optuna.journal"
# Trials that count toward tune.n_trials; failed ones are redrawn instead.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
        # A worker on any host that stops beating has its trial failed by the others; no
        # re-queue is needed: the next trial redraws its params (see tune.make_sampler).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental"
            return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30)
    path = url.removeprefix("journal://")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def ask_lock(storage: str, study_name: str) -> FileLock:
    """Serialises 'count trials, then start one' between local workers so none overshoots."""
    if is_database(storage):
        return FileLock(str(Path(tempfile.gettempdir()) / f"optuna-{study_name}.lock"))
    return FileLock(storage.removeprefix("journal://") + ".ask.lock")


def mark_owner(trial: optuna.Trial) -> None:
    """Record which process runs the trial, so a later process can tell if it died."""
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", platform.node())


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker on this host is gone (public API: Study.tell).

    They are not re-queued: the sampler is seeded from the study's progress, so the next trial
    draws the dead one's params again -- all of them, even when it died between two suggestions.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_gone(trial.user_attrs.get("host"), trial.user_attrs.get("pid")):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(trial.number)
    if failed:
        log.warning("failed trials %s left RUNNING by a dead worker; their params are redrawn",
                    failed)
    return failed


def count(study: optuna.Study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out

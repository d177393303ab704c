"""Optuna tuning: the worker loop, worker processes and Ctrl-C, the study's parent run, tune."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.core import interrupts
from pipeline.core.config import Params
from pipeline.core.errors import PipelineError
from pipeline.core.interrupts import INTERRUPTED_EXIT, Interrupted, interruptible
from pipeline.core.lineage import dvc_hash
from pipeline.core.locks import Lock
from pipeline.core.progress import Progress
from pipeline.core.services import check_database, mask
from pipeline.core.tags import Tag
from pipeline.data.dataset import DatasetMeta, Split, load_splits
from pipeline.evaluation.metrics import direction
from pipeline.evaluation.plots import save_study_figures
from pipeline.models.backbones import check_checkpoint
from pipeline.models.device import resolve_precision, select_device
from pipeline.tracking import metric_log, runs, store
from pipeline.training.crossval import folds_for
from pipeline.tuning import trial_runs
from pipeline.tuning.objective import THREADS_ATTR, TuneJob, run_trial, trial_threads
from pipeline.tuning.study import (
    FINISHED,
    ask_lock,
    best_trial,
    count,
    fail_dead_trials,
    fail_own_trials,
    heartbeat_seconds,
    is_database,
    make_pruner,
    make_sampler,
    make_storage,
    mark_owner,
    study_name,
)
from pipeline.tuning.trial_runs import parent_run_id

log = logging.getLogger(__name__)
# How often a worker with nothing to start looks at the others' trials again.
POLL_SECONDS = 2.0


def open_study(job: TuneJob) -> optuna.Study:
    """Create or load the study (its sampler is replaced before every trial)."""
    tune = job.params.tune
    storage = make_storage(job.storage, tune.n_workers)
    # Optuna logs "A new study created" in one process and "Using an existing study" in each
    # other worker; tune() says once which study runs where.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(
            study_name=job.study_name, storage=storage, load_if_exists=True,
            direction=direction(tune.metric),
            sampler=make_sampler(job.params.seed, job.worker, 0),
            pruner=make_pruner(tune.pruner, job.params.train.epochs))
    finally:
        optuna.logging.set_verbosity(verbosity)


@contextlib.contextmanager
def watching(job: TuneJob) -> Iterator[None]:
    """In a database study, fail and re-queue dead workers' trials every heartbeat, on any
    host, also while this worker is busy training (the loop below only checks between trials)."""
    if not is_database(job.storage):
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        study, lock = open_study(job), ask_lock(job.storage, job.study_name)
        ended = trial_runs.DeadTrialRuns(job.experiment_id, job.study_name)
        while not stop.wait(heartbeat_seconds()):
            with lock:
                fail_dead_trials(study, job.storage)
            ended.sweep(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))

    thread = threading.Thread(target=watch, name="dead-trial-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_worker(job: TuneJob, progress: Progress | None = None,
               study: optuna.Study | None = None) -> optuna.Study:
    """Run trials until the study holds tune.n_trials complete + pruned trials; return it.

    It waits for trials that other workers (on any host) are running, so it returns only when
    the study is finished, and reruns the params of a trial whose worker died.
    """
    processed, meta = load_splits(job.data_dir, names=("val",))
    train = load_splits(job.train_dir, names=("train",))[0]["train"]
    folds = folds_for(job.params.train.cv_folds, train, processed["val"])
    study = study or open_study(job)
    if folds:  # trials report folds, not epochs: the pruner counts folds
        study.pruner = make_pruner(job.params.tune.pruner, job.params.train.epochs, folds)
    lock = ask_lock(job.storage, job.study_name)
    started = time.monotonic()
    with watching(job):
        try:
            return work(replace(job, folds=folds), study, lock, train, processed["val"], meta,
                        started, progress)
        except Interrupted:
            # Optuna did not tell the trial (see Interrupted): nothing of ours stays RUNNING.
            fail_own_trials(study, job.storage)
            raise


def work(job: TuneJob, study: optuna.Study, lock: Lock, train: Split, val: Split,
         meta: DatasetMeta, started: float, progress: Progress | None) -> optuna.Study:
    """The worker loop: under the lock, repair, count, then start one trial or wait."""
    tune = job.params.tune
    ended = trial_runs.DeadTrialRuns(job.experiment_id, job.study_name)
    while True:
        if tune.timeout is not None and time.monotonic() - started > tune.timeout:
            log.info("worker %d: tune.timeout reached", job.worker)
            return study
        lock.acquire()
        try:
            fail_dead_trials(study, job.storage)
            trials = study.get_trials(deepcopy=False)
            ended.sweep(trials)  # also before returning: the last trial failed may be a dead one
            counts = count(trials)
            if counts.get("FAIL", 0) > 2 * tune.n_trials:
                raise PipelineError(f"study {job.study_name}: {counts['FAIL']} failed trials; "
                                    "see the FAILED child runs in MLflow for the errors")
            finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
            if finished >= tune.n_trials:
                return study
            # RUNNING trials count too: another worker is finishing them (or dies, and its
            # trial is failed and re-queued above, on a later pass).
            busy = finished + counts.get("RUNNING", 0) >= tune.n_trials
            if not busy:
                # The trial after k finished ones draws from the same stream whether or not
                # the study was interrupted (failed trials don't count), so a rerun repeats a
                # killed trial's params and then proposes what an uninterrupted study would.
                study.sampler = make_sampler(job.params.seed, job.worker, finished)

                def objective(trial: optuna.Trial) -> float:
                    # The trial now exists as RUNNING, so other workers count it: unlock, once
                    # it names its owner (a RUNNING trial without one is an orphan).
                    mark_owner(trial)
                    lock.release()
                    return run_trial(job, trial, train, val, meta)

                # optimize (not ask/tell) so database storages get Optuna's heartbeat thread.
                study.optimize(objective, n_trials=1, catch=(PipelineError,),
                               gc_after_trial=False)
        finally:
            if lock.is_locked:
                lock.release()
        if busy:
            time.sleep(POLL_SECONDS)
        elif progress is not None:
            progress.update(**progress_fields(study))


def progress_fields(study: optuna.Study) -> dict[str, Any]:
    """Best value so far and trial counts for the progress display."""
    counts = count(study)
    try:
        best: Any = round(study.best_value, 5)
    except ValueError:
        best = "-"
    return {"best": best, "complete": counts.get("COMPLETE", 0),
            "pruned": counts.get("PRUNED", 0), "failed": counts.get("FAIL", 0)}


def _spawned_worker(job: TuneJob) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{job.worker}: "
                        "%(message)s")
    store.configure()  # a spawned process starts with MLflow unconfigured
    with interruptible(always=True):  # started with Ctrl-C ignored (start_quietly)
        try:
            run_worker(job)
        except Interrupted:
            raise SystemExit(INTERRUPTED_EXIT) from None


def stop_workers(job: TuneJob, workers: list[multiprocessing.process.BaseProcess]) -> None:
    """Stop every worker, then fail the trials any of them left RUNNING (one killed)."""
    interrupts.stop_all(workers)
    study = open_study(job)
    with ask_lock(job.storage, job.study_name):
        fail_dead_trials(study, job.storage)
    trial_runs.DeadTrialRuns(job.experiment_id, job.study_name).sweep(study.get_trials(
        deepcopy=False, states=(TrialState.FAIL,)))


def run_study(job: TuneJob) -> optuna.Study:
    """Run tune.n_workers workers (processes when > 1) on the shared study; return it."""
    progress = Progress(job.params.tune.n_trials, "tune", every=1)
    try:
        with interruptible():
            if job.params.tune.n_workers == 1:
                return run_worker(job, progress)
            return run_processes(job, progress)
    finally:
        progress.close()


def run_processes(job: TuneJob, progress: Progress) -> optuna.Study:
    """Worker processes on the study; Ctrl-C (to the parent, or to any worker) stops them all."""
    ctx = multiprocessing.get_context("spawn")
    # Worker numbers continue from job.worker, so hosts joining with distinct bases never
    # share a sampler stream.
    workers = [ctx.Process(target=_spawned_worker, args=(replace(job, worker=job.worker + i),))
               for i in range(job.params.tune.n_workers)]
    interrupts.start_quietly(workers)
    study, seen = open_study(job), 0
    try:
        while any(w.is_alive() for w in workers):
            time.sleep(1.0)
            if any(w.exitcode == INTERRUPTED_EXIT for w in workers):
                interrupts.interrupt()  # one worker's Ctrl-C stops them all
            finished = sum(count(study).get(s.name, 0) for s in FINISHED)
            for _ in range(finished - seen):
                progress.update(**progress_fields(study))
            seen = finished
    except Interrupted:
        stop_workers(job, workers)
        raise
    bad = [w.exitcode for w in workers if w.exitcode != 0]
    if bad:
        raise PipelineError(f"tune: {len(bad)} worker(s) failed (exit codes {bad}); "
                            "see the log above")
    return study


def interrupted(job: TuneJob) -> str:
    """The one line Ctrl-C leaves: what the study keeps and how to resume it."""
    counts = count(open_study(job))
    done = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    return (f"tune interrupted (Ctrl-C): study {job.study_name} keeps {done} of "
            f"{job.params.tune.n_trials} finished trials, none left running; run the stage "
            "again to resume it (the interrupted trial reruns with the same params)")


def open_services(params: Params, data_dir: str, train_dir: str, storage: str) -> str:
    """Check the Optuna storage and the tracking store answer (fast); return the study name."""
    if is_database(storage):
        check_database(storage, "OPTUNA_STORAGE")
    store.configure()
    return study_name(params, {p: dvc_hash(p) for p in (data_dir, train_dir)})


def tune(params: Params, data_dir: str, train_dir: str, storage: str) -> dict[str, Any]:
    """Run (or resume) the study for these params and data; return what best_params.json holds."""
    if not params.tune.enabled:
        return {"enabled": False, "params": {}}
    meta = load_splits(data_dir, names=())[1]
    # A bad checkpoint fails here, once, not as every trial failing in turn.
    check_checkpoint(params.model, meta.input_shape)
    resolve_precision(params.train.precision, select_device())  # bf16 off CUDA: fail once
    name = open_services(params, data_dir, train_dir, storage)
    log.info("study %s in %s (%d trials on val_%s, %d worker(s) here; other hosts may join "
             "with `python -m pipeline.cli.tune_worker`)", name, mask(storage),
             params.tune.n_trials, params.tune.metric, params.tune.n_workers)
    run_id = parent_run_id(params, name, storage)  # tune_worker joins it as tune.parent_run_id
    # Ctrl-C from here on leaves one line; a second one cannot cut the clean-up short.
    exp_id = store.experiment_id(params.mlflow.experiment)
    with interruptible(), runs.start_run(exp_id, run_id=run_id,
                                         tags={Tag.DATA_SOURCE: runs.data_source(meta)}):
        job = TuneJob(params, data_dir, train_dir, storage, name, run_id, exp_id)
        try:
            study = run_study(job)
        except Interrupted:  # a KeyboardInterrupt ends the parent run KILLED
            raise KeyboardInterrupt(interrupted(job)) from None
        best = best_trial(study)
        # Tags, not params: a resumed study may find a better trial, and params are immutable.
        metric_log.log_tags({Tag.BEST_PARAM + k: str(v) for k, v in best.params.items()})
        # Stepped by the study's size: an extended study (a later experiment) adds a point
        # to each curve instead of replacing what the earlier one recorded.
        metric_log.log_metrics({f"best_val_{params.tune.metric}": best.value,
                                "best_trial": best.number,
                                **{f"trials_{k.lower()}": v for k, v in count(study).items()}},
                               step=len(study.trials))
        metric_log.log_artifacts(save_study_figures(study, f"val_{params.tune.metric}"), "optuna")
    log.info("best trial %d: val_%s=%.5f %s", best.number, params.tune.metric, best.value,
             best.params)
    # The threads the best trial trained with (trials from before the attribute: this host's
    # count): train uses them to reproduce its score.
    threads = best.user_attrs.get(THREADS_ATTR, trial_threads(params.train.num_threads,
                                                              params.tune.n_workers))
    return {"enabled": True, "params": best.params, "metric": params.tune.metric,
            "value": best.value, "study_name": name,
            "n_trials": params.tune.n_trials, "num_threads": threads}

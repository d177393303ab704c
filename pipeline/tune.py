"""Optuna tuning: study identity, sampling, pruning, the trial objective and the worker loop."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna

from pipeline import tracking
from pipeline.config import ModelConfig, Params, SearchParam, TrainConfig
from pipeline.dataset import DatasetMeta, Split, load_splits
from pipeline.engine import Callback, select_device
from pipeline.errors import ConfigError, PipelineError
from pipeline.lineage import dvc_hash
from pipeline.metrics import direction
from pipeline.plots import save_study_figures
from pipeline.progress import Progress
from pipeline.study import (
    FINISHED,
    ask_lock,
    count,
    fail_dead_trials,
    make_storage,
    mark_owner,
)
from pipeline.tags import Tag
from pipeline.training import apply_tuned, fit_model
from pipeline.typed import field_type

log = logging.getLogger(__name__)


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


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Pruner from tune.pruner; warm-up avoids judging trials on their noisy first epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=min(4, epochs - 1))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=epochs,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


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


@dataclass(frozen=True)
class TuneJob:
    """Everything a worker process needs (picklable for spawn)."""

    params: Params
    data_dir: str
    train_dir: str
    storage: str
    study_name: str
    parent_run_id: str
    experiment_id: str
    worker: int = 0


class ReportToOptuna(Callback):
    """Report the validation metric each epoch and prune when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.trial.report(logs[f"val_{self.metric}"], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def make_sampler(seed: int, worker: int, finished: int) -> optuna.samplers.TPESampler:
    """TPE seeded from the study's progress, not from process start, so a resumed study
    proposes what an uninterrupted one would have (its history is the same)."""
    # Workers get their own streams so parallel workers do not propose identical points.
    state = np.random.SeedSequence([seed, worker, finished]).generate_state(1)[0]
    return optuna.samplers.TPESampler(seed=int(state), n_startup_trials=5)


def open_study(job: TuneJob) -> optuna.Study:
    """Create or load the study (its sampler is replaced before every trial)."""
    tune = job.params.tune
    return optuna.create_study(
        study_name=job.study_name, storage=make_storage(job.storage, tune.n_workers),
        load_if_exists=True, direction=direction(tune.metric),
        sampler=make_sampler(job.params.seed, job.worker, 0),
        pruner=make_pruner(tune.pruner, job.params.train.epochs))


def run_trial(job: TuneJob, trial: optuna.Trial, train: Split, val: Split,
              meta: DatasetMeta) -> float:
    """Train one sampled configuration, exactly as the train stage would, in a nested run."""
    params = job.params
    mark_owner(trial)
    values = suggest(trial, params.tune.search_space)
    try:
        train_cfg, model_cfg = apply_tuned(params.train, params.model, values)
    except ConfigError as err:
        raise PipelineError(f"trial {trial.number}: invalid sampled params {values}: {err}") \
            from None
    # Parallel workers share the cores instead of oversubscribing them.
    threads = max(1, train_cfg.num_threads // params.tune.n_workers)
    train_cfg = replace(train_cfg, num_threads=threads)
    with tracking.trial_run(job.experiment_id, job.parent_run_id, job.study_name, trial.number,
                            {**values, "worker": job.worker}) as run:
        logger = tracking.EpochLogger(run.run_id)
        try:
            result = fit_model(model_cfg, train_cfg, params.augment, train, val, meta,
                               seed=params.seed, device=select_device(),
                               monitor=params.tune.metric,
                               callbacks=[ReportToOptuna(trial, params.tune.metric), logger])
        except optuna.TrialPruned:
            logger.flush()
            run.state = "PRUNED"
            raise
        run.state = "COMPLETE"
        tracking.log_metrics({"objective": result.best_score, "best_epoch": result.best_epoch},
                             run.run_id)
        return result.best_score


def run_worker(job: TuneJob, progress: Progress | None = None) -> None:
    """Run trials until the study holds tune.n_trials complete + pruned trials."""
    tune = job.params.tune
    processed, meta = load_splits(job.data_dir, names=("val",))
    train = load_splits(job.train_dir, names=("train",))[0]["train"]
    study = open_study(job)
    lock = ask_lock(job.storage, job.study_name)
    started = time.monotonic()
    while True:
        if tune.timeout is not None and time.monotonic() - started > tune.timeout:
            log.info("worker %d: tune.timeout reached", job.worker)
            return
        lock.acquire()
        try:
            fail_dead_trials(study)
            counts = count(study)
            if counts.get("FAIL", 0) > 2 * tune.n_trials:
                raise PipelineError(f"study {job.study_name}: {counts['FAIL']} failed trials; "
                                    "see the FAILED child runs in MLflow for the errors")
            # RUNNING trials count too: another worker is finishing them.
            finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
            if finished + counts.get("RUNNING", 0) >= tune.n_trials:
                return
            # The trial after k finished ones draws from the same stream whether or not the
            # study was interrupted (failed trials don't count), so a rerun repeats a killed
            # trial's params and then proposes exactly what an uninterrupted study would.
            study.sampler = make_sampler(job.params.seed, job.worker, finished)

            def objective(trial: optuna.Trial) -> float:
                # The trial now exists as RUNNING, so other workers count it: release the lock.
                lock.release()
                return run_trial(job, trial, train, processed["val"], meta)

            # optimize (not ask/tell) so database storages get Optuna's heartbeat thread.
            study.optimize(objective, n_trials=1, catch=(PipelineError,), gc_after_trial=False)
        finally:
            if lock.is_locked:
                lock.release()
        if progress is not None:
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
    tracking.configure()  # a spawned process starts with MLflow unconfigured
    run_worker(job)


def run_study(job: TuneJob) -> optuna.Study:
    """Run tune.n_workers workers (processes when > 1) on the shared study; return it."""
    tune = job.params.tune
    progress = Progress(tune.n_trials, "tune", every=1)
    try:
        if tune.n_workers == 1:
            run_worker(job, progress)
            return open_study(job)
        ctx = multiprocessing.get_context("spawn")
        workers = [ctx.Process(target=_spawned_worker, args=(replace(job, worker=i),))
                   for i in range(tune.n_workers)]
        for worker in workers:
            worker.start()
        study, seen = open_study(job), 0
        while any(w.is_alive() for w in workers):
            time.sleep(1.0)
            finished = sum(count(study).get(s.name, 0) for s in FINISHED)
            for _ in range(finished - seen):
                progress.update(**progress_fields(study))
            seen = finished
        bad = [w.exitcode for w in workers if w.exitcode != 0]
        if bad:
            raise PipelineError(f"tune: {len(bad)} worker(s) failed (exit codes {bad}); "
                                "see the log above")
        return study
    finally:
        progress.close()


@contextlib.contextmanager
def parent_run(params: Params, name: str, storage: str) -> Iterator[str]:
    """One MLflow parent run per study, resumed when the study is resumed."""
    experiment = params.mlflow.experiment
    existing = tracking.find_run(experiment, Tag.STUDY_PARENT, name)
    with tracking.start_run(experiment, run_name=f"tune {name}", run_id=existing, tags={
            Tag.STUDY_PARENT: name, Tag.STUDY: name,
            Tag.STORAGE: storage, Tag.STAGE: "tune"}) as run_id:
        yield run_id


def tune(params: Params, data_dir: str, train_dir: str, storage: str) -> dict[str, Any]:
    """Run (or resume) the study for these params and data; return what best_params.json holds."""
    if not params.tune.enabled:
        return {"enabled": False, "params": {}}
    name = study_name(params, {p: dvc_hash(p) for p in (data_dir, train_dir)})
    tracking.configure()
    log.info("study %s in %s (%d trials, %d worker(s))", name, storage, params.tune.n_trials,
             params.tune.n_workers)
    with parent_run(params, name, storage) as run_id:
        job = TuneJob(params, data_dir, train_dir, storage, name, run_id,
                      tracking.experiment_id(params.mlflow.experiment))
        study = run_study(job)
        best = study.best_trial
        # Tags, not params: a resumed study may find a better trial, and params are immutable.
        tracking.log_tags({f"best.{k}": str(v) for k, v in best.params.items()})
        tracking.log_metrics({f"best_val_{params.tune.metric}": best.value,
                              "best_trial": best.number,
                              **{f"trials_{k.lower()}": v for k, v in count(study).items()}})
        tracking.log_artifacts(save_study_figures(study), "optuna")
    log.info("best trial %d: val_%s=%.5f %s", best.number, params.tune.metric, best.value,
             best.params)
    return {"enabled": True, "params": best.params, "metric": params.tune.metric,
            "value": best.value, "study_name": name,
            "n_trials": params.tune.n_trials}
